"""Removing what a job left behind, as root, without following a path the user can change:
its processes (found by a marker variable), its mounts and its files.

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


# ---------------------------------------------------------------------------------------------
# Processes and mounts a job left: found by a marker variable every task of the job carries and
# by the job's key in mount point names.

def _environ_has(pid: str, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


def _real_uid(pid: str) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def is_marked(pid: str, marker: bytes, uid: Optional[int]) -> bool:
    """Carries ``marker`` (``NAME=VALUE``) and, for a user's job, runs as that user: a user who
    puts another job's marker in a process of theirs only exposes their own processes."""
    if not _environ_has(pid, marker):
        return False
    return uid is None or uid == 0 or _real_uid(pid) == uid


def marked_processes(marker: bytes, uid: Optional[int], proc: str = "/proc") -> List[int]:
    me = os.getpid()
    return sorted(int(p) for p in os.listdir(proc)
                  if p.isdigit() and int(p) != me and is_marked(p, marker, uid))


def _unescape_mountinfo(field_text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal (\040...)
    out, i = [], 0
    while i < len(field_text):
        if field_text[i] == "\\" and field_text[i + 1:i + 4].isdigit():
            out.append(chr(int(field_text[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field_text[i])
            i += 1
    return "".join(out)


def mounts_named(key: str, mountinfo: str = "/proc/self/mountinfo") -> List[str]:
    """Mount points with a path component ``KEY`` or ``KEY.*``, deepest first."""
    try:
        with open(mountinfo) as f:
            points = [_unescape_mountinfo(line.split()[4]) for line in f]
    except OSError:
        return []
    found = [p for p in points if any(part == key or part.startswith(key + ".")
                                      for part in p.split("/"))]
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def _running(pid: int) -> bool:
    # A zombie still answers kill(0); the state letter in /proc/PID/stat tells it is gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_gone(pids: List[int], seconds: float) -> List[int]:
    import time
    deadline = time.monotonic() + seconds
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _running(p)]
        if alive:
            time.sleep(0.05)
    return alive


def stop_processes(pids: Sequence[int], marker: bytes, uid: Optional[int],
                   grace: float) -> Tuple[List[str], List[int]]:
    """SIGTERM, ``grace`` seconds, SIGKILL; (problems, survivors).  Each process is held by a
    pidfd once its marker and owner are checked, so a PID reused meanwhile is never signalled."""
    import signal
    problems: List[str] = []
    held = {}
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        except (AttributeError, OSError):
            fd = -1                      # no pidfd on this kernel: signal by PID
        if is_marked(str(pid), marker, uid):
            held[pid] = fd
        elif fd >= 0:
            os.close(fd)
    alive = list(held)
    try:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2)):
            for pid in alive:
                try:
                    if held[pid] >= 0:
                        signal.pidfd_send_signal(held[pid], sig)
                    else:
                        os.kill(pid, sig)
                except ProcessLookupError:
                    pass
                except OSError as e:
                    problems.append(f"kill {pid}: {e.strerror}")
            alive = _wait_gone(alive, wait)
            if not alive:
                break
        problems += [f"process {p} survived SIGKILL" for p in alive]
    finally:
        for fd in held.values():
            if fd >= 0:
                os.close(fd)
    return problems, alive
