"""Removing what a job left behind, as root, without following a path the user can change.

Job-end cleanup (the PBS ``execjob_end`` hook) runs as root over paths that pass through
directories the job's user owns: ``/tmp/hpccont-UID``, a home directory holding a leftover
mount.  Between the moment such a path is listed and the moment it is used, the user can
replace any directory on it with a symlink (to ``/``, say), and a root ``umount``, ``unlink``
or ``rmtree`` by path would then act on whatever the link points to.  So nothing here uses a
path twice:

- ``open_dir`` walks a path from ``/`` one component at a time with
  ``O_PATH|O_NOFOLLOW|O_DIRECTORY`` (a symlink anywhere fails the walk), and checks with fstat
  that each directory belongs to an owner the caller accepts;
- ``detach`` unmounts ``/proc/self/fd/PARENT/NAME`` with ``UMOUNT_NOFOLLOW``: the kernel goes
  straight to the directory the descriptor holds, and a symlinked last component is refused;
- ``remove_at`` deletes relative to directory descriptors, opens each subdirectory with
  ``O_NOFOLLOW|O_NONBLOCK|O_DIRECTORY``, checks it is the one it listed, and never descends
  into another mount (a mount that could not be detached keeps its content);
- ``remove_paths`` deletes inside a directory only root can write as root, and everything else
  in a child that has become the job's user (privsep.run_as_user), so root never deletes
  through a directory the user controls.

Stdlib only.
"""
from __future__ import annotations

import errno
import os
import stat
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Optional, Sequence, Tuple

from ..errors import HpccontError

UMOUNT_NOFOLLOW = 0x8        # umount2: do not dereference the last component if it is a symlink
MNT_DETACH = 0x2
_WALK = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
_SUBDIR = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC
MAX_DEPTH = 64               # a deeper tree is left alone (and reported), not recursed into


class UnsafePath(HpccontError):
    """A path changed under us, passes through a symlink, or belongs to someone unexpected."""
    exit_code = 9


def _owner_ok(fd: int, where: str, owners: Sequence[int]) -> None:
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{where} is not a directory")
    if st.st_uid not in owners:
        raise UnsafePath(f"{where} belongs to uid {st.st_uid}, not to "
                         f"{' or '.join(f'uid {o}' for o in owners)}")


def open_dir(path: str, owners: Sequence[int] = (0,)) -> int:
    """An O_PATH descriptor of directory ``path``, reached without following any symlink,
    every directory on the way owned by one of ``owners``.  UnsafePath otherwise; OSError
    (ENOENT...) when a component is missing."""
    if not path.startswith("/"):
        raise UnsafePath(f"{path}: not an absolute path")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise UnsafePath(f"{path}: has . or .. components")
    fd = os.open("/", _WALK)
    try:
        _owner_ok(fd, "/", owners)
        for i, part in enumerate(parts):
            where = "/" + "/".join(parts[:i + 1])
            try:
                nfd = os.open(part, _WALK, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise UnsafePath(f"{where} is a symbolic link or not a directory; "
                                     "not followed") from None
                raise
            os.close(fd)
            fd = nfd
            _owner_ok(fd, where, owners)
        return fd
    except BaseException:
        os.close(fd)
        raise


def detach(point: str, owners: Sequence[int] = (0,)) -> None:
    """Lazily unmount the mount at ``point`` (MNT_DETACH: a busy leftover is freed when unused).

    The parent directory is reached with open_dir; the unmount goes through the descriptor
    (``/proc/self/fd/N/NAME``, UMOUNT_NOFOLLOW), never through the path again."""
    from . import kernel
    parent, name = os.path.split(point.rstrip("/"))
    if not name or name in (".", ".."):
        raise UnsafePath(f"{point}: not a mount point this cleanup may detach")
    fd = open_dir(parent or "/", owners)
    try:
        kernel.umount2(f"/proc/self/fd/{fd}/{name}", MNT_DETACH | UMOUNT_NOFOLLOW)
    finally:
        os.close(fd)


def _mount_id(fd: int) -> int:
    """The mount a descriptor's file is on (/proc/self/fdinfo: a bind mount from the same
    filesystem has the same st_dev, but not the same mount id)."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    return -1


def remove_at(dir_fd: int, name: str, depth: int = 0, top_mount: Optional[int] = None) -> None:
    """Remove ``name`` in the directory ``dir_fd`` (a whole tree for a directory), never
    following a symlink, never entering another mount.  A missing name is fine."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    if top_mount is None:
        top_mount = _mount_id(dir_fd)
    if depth >= MAX_DEPTH:
        raise UnsafePath(f"{name}: more than {MAX_DEPTH} directory levels; left alone")
    fd = os.open(name, _SUBDIR, dir_fd=dir_fd)
    try:
        got = os.fstat(fd)
        if (got.st_dev, got.st_ino) != (st.st_dev, st.st_ino):
            raise UnsafePath(f"{name} was replaced while it was being removed")
        if _mount_id(fd) != top_mount:
            raise UnsafePath(f"{name} is a mount point; its content is left alone")
        failed = []
        for entry in os.listdir(fd):
            try:
                remove_at(fd, entry, depth + 1, top_mount)
            except (OSError, UnsafePath) as e:
                failed.append(e)         # the rest still goes; the first problem is reported
        if failed:
            raise failed[0]
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def _problem(path: str, e: BaseException) -> str:
    if isinstance(e, HpccontError):
        return f"remove {path}: {e.one_line()}"
    if isinstance(e, OSError):
        return f"remove {path}: {e.strerror or e}"
    return f"remove {path}: {e}"


def remove_paths(paths: Sequence[str], uid: Optional[int], gid: Optional[int] = None,
                 groups: Sequence[int] = ()) -> List[str]:
    """Remove each of ``paths`` (files or trees).  Returns the problems, one line each.

    ``uid``/``gid``/``groups``: the job's user.  Directories on the way may belong to root
    or to that user (anything else is refused).  An entry in a directory that only root can
    write is removed here; every other removal runs in a child that has become the user, so
    the kernel applies the user's rights to it.  ``uid`` None: only root's directories."""
    owners = (0,) if uid is None or uid == 0 else (0, uid)
    problems: List[str] = []
    as_root: List[Tuple[int, str, str]] = []
    as_user: List[Tuple[int, str, str]] = []
    for path in paths:
        parent, name = os.path.split(path.rstrip("/"))
        if not name or name in (".", ".."):
            problems.append(f"remove {path}: not a path this cleanup removes")
            continue
        try:
            fd = open_dir(parent or "/", owners)
        except FileNotFoundError:
            continue                     # already gone
        except (OSError, HpccontError) as e:
            problems.append(_problem(path, e))
            continue
        st = os.fstat(fd)
        root_only = st.st_uid == 0 and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        (as_root if root_only or uid == 0 else as_user).append((fd, name, path))
    try:
        for fd, name, path in as_root:
            try:
                remove_at(fd, name)
            except (OSError, HpccontError, RecursionError) as e:
                problems.append(_problem(path, e))
        if as_user:
            problems += _remove_as_user(as_user, uid, gid, groups)
    finally:
        for fd, _, _ in as_root + as_user:
            os.close(fd)
    return problems


def _remove_as_user(items: List[Tuple[int, str, str]], uid: Optional[int], gid: Optional[int],
                    groups: Sequence[int]) -> List[str]:
    if uid is None:
        return [f"remove {p}: in a directory root does not own alone, and the job's user is "
                "unknown; left alone" for _, _, p in items]

    def work():
        found = []
        for fd, name, path in items:
            try:
                remove_at(fd, name)
            except (OSError, HpccontError, RecursionError) as e:
                found.append(_problem(path, e))
        return "\0".join(found), []
    if os.geteuid() != 0:
        text, _ = work()                 # no privilege to drop: already at most the user
    else:
        import pwd
        from ..privsep import run_as_user
        if gid is None:
            try:
                gid = pwd.getpwuid(uid).pw_gid
            except KeyError:
                gid = uid
        try:
            text, _ = run_as_user(work, uid, gid, groups)
        except HpccontError as e:
            return [f"remove {p}: as uid {uid}: {e.one_line()}" for _, _, p in items]
    return [t for t in text.split("\0") if t]
