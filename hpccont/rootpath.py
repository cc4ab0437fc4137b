"""Paths inside a directory tree that is an image's root but not (yet) ours.

Symlinks in an image are written for the image's own root: ``/var/run -> /run`` must lead to
ROOT/run, never to the host's /run.  Both the builder (writing layers and %files into a rootfs)
and the runtime (placing mount points in the container's root) resolve paths here, as the
kernel would after a chroot, so that an image can never make them act on the host.

What differs is ``..`` above the root: a chroot clamps it to the root, which the builder
accepts (``escape="clamp"``); the runtime refuses it (``escape="refuse"``), because a bind
destination that climbs out of the container is a mistake or an attempt.
"""
from __future__ import annotations

import os

MAX_LINKS = 40


def components(path: str) -> list:
    return [p for p in path.split("/") if p and p != "."]


def resolve(root: str, path: str, *, follow_last: bool = True, escape: str = "clamp",
            error=ValueError) -> str:
    """Host path of ``path`` (absolute or relative to the image's /) inside ``root``.

    Raises ``error`` (an exception class taking one message) for too many symbolic links and,
    with ``escape="refuse"``, for a path that climbs above the root.
    """
    todo = components(path)
    done: list = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            elif escape == "refuse":
                raise error(f"{path} escapes the container root")
            continue
        candidate = os.path.join(root, *done, part)
        if (todo or follow_last) and os.path.islink(candidate):
            links += 1
            if links > MAX_LINKS:
                raise error(f"{path}: too many levels of symbolic links in the image")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            todo = components(target) + todo
            continue
        done.append(part)
    return os.path.join(root, *done)
