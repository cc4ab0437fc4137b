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


def open_in_root(root, path: str, flags: int = os.O_RDONLY) -> int:
    """A descriptor of ``path`` inside the tree at ``root`` (a path or a directory descriptor),
    looked up one component at a time as the kernel would after a chroot there: absolute
    symbolic links restart at the root, ``..`` stops at it, and no step can leave the tree,
    whatever the tree's links say or however they change meanwhile (each component is opened
    relative to its parent's descriptor, without following links).

    ``flags`` apply to the last component, which is opened as a file (never followed if it is
    a link: links were resolved in the walk).  Raises OSError (ELOOP after MAX_LINKS links).
    """
    import errno
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) if isinstance(root, str) \
        else os.dup(root)
    todo = components(path)
    stack = [rootfd]
    links = 0
    try:
        while todo:
            part = todo.pop(0)
            if part == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            try:
                target = os.readlink(part, dir_fd=stack[-1])
            except OSError:
                target = None            # not a link (or missing: the open below says so)
            if target is not None:
                links += 1
                if links > MAX_LINKS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                todo = components(target) + todo
                continue
            if todo:
                stack.append(os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW |
                                     os.O_CLOEXEC, dir_fd=stack[-1]))
            else:
                return os.open(part, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
        return os.open(".", flags | os.O_CLOEXEC, dir_fd=stack[-1])     # the root itself
    finally:
        for fd in stack:
            os.close(fd)


def read_in_root(root, path: str, limit: int = 16 << 20) -> bytes | None:
    """The content of regular file ``path`` inside ``root`` (see open_in_root), at most
    ``limit`` bytes; None when it is missing or not a regular file (a FIFO, a device node or a
    directory in the image is never opened for reading)."""
    import stat
    try:
        fd = open_in_root(root, path, os.O_PATH)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        chunks, size = [], 0
        while size < limit:
            chunk = os.read(data, min(1 << 20, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(data)


def open_mountpoint(root: str, path: str, is_dir: bool, *, escape: str = "refuse",
                    error=ValueError) -> int:
    """An O_PATH descriptor of mount point ``path`` inside ``root``, made when missing (its
    missing parents as directories, itself a directory or, ``is_dir`` false, an empty file).

    The walk is open_in_root's: one component at a time, relative to its parent's descriptor,
    never following a link (links are resolved as inside the root; ``..`` above the root is
    refused, or stays at the root with ``escape="clamp"``).  The caller mounts onto
    ``/proc/self/fd/N``, so what is mounted on is the very directory found here, even if the
    tree changes meanwhile: as root, in a sandbox its owner can write, a directory swapped for
    a link to a host path between a check and a mount by name would have put root's mount,
    and the mount point root creates, on the host.  A directory moved away mid-walk takes the
    mount with it, outside the container's root, where the container never sees it.
    Raises ``error`` for escapes and loops, OSError for what the filesystem refuses.
    """
    import errno
    import stat
    todo = components(path)
    stack = [os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)]
    links = 0
    try:
        while todo:
            part = todo.pop(0)
            if part == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                elif escape == "refuse":
                    raise error(f"{path} escapes the container root")
                continue
            try:
                target = os.readlink(part, dir_fd=stack[-1])
            except OSError:
                target = None            # not a link, or missing (made below)
            if target is not None:
                links += 1
                if links > MAX_LINKS:
                    raise error(f"{path}: too many levels of symbolic links in the image")
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                todo = components(target) + todo
                continue
            last = not todo
            try:
                fd = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
            except FileNotFoundError:
                if not _make_at(stack[-1], part, is_dir or not last):
                    links += 1               # it appeared meanwhile: look at it again
                    if links > MAX_LINKS:
                        raise OSError(errno.ELOOP, "mount point keeps changing", path)
                    todo.insert(0, part)
                    continue
                fd = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode) or (not last and not stat.S_ISDIR(mode)):
                # a link now where there was none a moment ago, or a file as a parent
                os.close(fd)
                raise OSError(errno.ELOOP if stat.S_ISLNK(mode) else errno.ENOTDIR,
                              "changed while being resolved" if stat.S_ISLNK(mode)
                              else "not a directory", path)
            if last:
                return fd
            stack.append(fd)
        # Only "." and ".." were left: the directory they led to ("/" itself, or "x/.." ->
        # the directory holding x; it used to return the root for any such path).
        return os.dup(stack[-1])
    finally:
        for fd in stack:
            os.close(fd)


def _make_at(dir_fd: int, name: str, is_dir: bool) -> bool:
    """Create ``name`` in ``dir_fd`` (never through a link); False if something is there now."""
    try:
        if is_dir:
            os.mkdir(name, 0o755, dir_fd=dir_fd)
        else:
            os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_WRONLY |
                             os.O_CLOEXEC, 0o644, dir_fd=dir_fd))
    except FileExistsError:
        return False
    return True
