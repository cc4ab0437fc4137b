"""Paths inside a rootfs that is not (yet) our root.

Symlinks in an image are written for the image's own root: ``/var/run -> /run`` must lead to
ROOTFS/run, never to the host's /run.  Every write into a rootfs (layers, %files) resolves its
path here, as a chroot would, so an image cannot make the builder write outside it.
"""
import os
from collections import deque

from ...errors import BuildError

MAX_LINKS = 40


def components(path: str) -> list:
    return [p for p in path.split("/") if p and p != "."]


def resolve(root: str, path: str, follow_last: bool = True) -> str:
    """Host path of ``path`` (absolute or relative to the image's /) inside ``root``."""
    todo = deque(components(path))
    done: list = []
    links = 0
    while todo:
        part = todo.popleft()
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = os.path.join(root, *done, part)
        if (todo or follow_last) and os.path.islink(candidate):
            links += 1
            if links > MAX_LINKS:
                raise BuildError(f"{path}: too many levels of symbolic links in the image")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            todo.extendleft(reversed(components(target)))
            continue
        done.append(part)
    return os.path.join(root, *done)


def clean_member_name(name: str) -> str:
    """A layer entry's path relative to the image root; '' for the root itself."""
    parts = components(name)
    if ".." in parts:
        raise BuildError(f"layer entry {name!r} points outside the image ('..')")
    return "/".join(parts)
