"""Privilege separation for code that runs as root on behalf of a job's user.

The Slurm plugin's accounting step and the PBS hooks run as root, but every path they are given
came from the user: an image path, a bind source, a directory to clean.  Opening such a path
with root's credentials would let the user read any file on the node (a root-only 0600 file
named as the image), hang the step (a FIFO), or follow a symlink swapped in between a check
and a use.  So root never opens a user-named path itself: a forked child drops to the user's
uid, gid and groups, resolves and opens the path there, and hands the open descriptor back over
a socketpair (SCM_RIGHTS).  Whatever root then reads, the user could have read; the user can
only race their own process.

Opened with O_NOFOLLOW after resolving the path as the user (a symlink the user made to their
own image still works), O_NONBLOCK (a FIFO or a device never blocks the open) and O_CLOEXEC;
fstat then says whether the object is one we accept.

Stdlib only, and no ``socket`` module: its enum conversions cost 3-28 ms per process (measured
here, idle and loaded) on the accounting program every step runs; the C module ``_socket`` it
wraps does the same system calls.
"""
from __future__ import annotations

import os
import stat
import sys
TYPE_CHECKING = False   # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Callable, List, Sequence, Tuple

from .errors import HpccontError, PrivsepError

# The environment every program started as root gets: chosen here, never the job's.
ROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "LC_ALL": "C"}
# Where root looks for the programs it runs (absolute paths only, never a user's PATH).
SYSTEM_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin")

# want -> (open flags beyond the common ones, fstat test, what to call it in errors)
KINDS = {
    "file": (0, stat.S_ISREG, "a regular file"),
    "dir": (os.O_DIRECTORY, stat.S_ISDIR, "a directory"),
    "any": (0, lambda m: stat.S_ISREG(m) or stat.S_ISDIR(m), "a regular file or a directory"),
}
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def system_program(name: str) -> str:
    """Absolute path of ``name`` in the system directories; PrivsepError if absent."""
    for d in SYSTEM_DIRS:
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    raise PrivsepError(f"{name} not found in {':'.join(SYSTEM_DIRS)}")


def drop_to(uid: int, gid: int, groups: Sequence[int]) -> None:
    """Become the user entirely (groups first: setgroups needs the capability we drop last)."""
    os.setgroups(list(groups))
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def open_checked(path: str, want: str = "file") -> Tuple[int, str]:
    """In the user's process: resolve ``path``, open it without following a final symlink,
    check what it is.  Returns (fd, real path)."""
    extra, ok, what = KINDS[want]
    real = os.path.realpath(path)
    try:
        fd = os.open(real, OPEN_FLAGS | extra)
    except OSError as e:
        raise PrivsepError(f"{path}: {e.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not ok(mode):
        os.close(fd)
        raise PrivsepError(f"{path}: not {what}")
    return fd, real


def run_as_user(func: Callable[[], Tuple[str, List[int]]], uid: int, gid: int,
                groups: Sequence[int] = (), timeout: float = 30.0) -> Tuple[str, List[int]]:
    """Run ``func`` in a child that has become the user; it returns (text, descriptors) and
    those descriptors arrive here open.  An HpccontError in the child is raised here with its
    one-line message; a child that hangs past ``timeout`` is killed."""
    import _socket
    parent, child = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            parent.close()
            drop_to(uid, gid, groups)
            try:
                text, fds = func()
                msg = b"ok\0" + text.encode("utf-8", "surrogateescape")
            except HpccontError as e:
                fds, msg = [], b"error\0" + e.one_line().encode("utf-8", "surrogateescape")
            except OSError as e:
                fds, msg = [], b"error\0" + str(e).encode("utf-8", "surrogateescape")
            _send_fds(child, msg, fds)
        except BaseException:
            code = 125
        finally:
            os._exit(code)
    child.close()
    try:
        parent.settimeout(timeout)
        try:
            msg, fds = _recv_fds(parent, 1 << 20, 16)
        except TimeoutError:
            os.kill(pid, 9)
            raise PrivsepError(f"the check as uid {uid} took longer than {timeout:.0f} s") from None
    finally:
        parent.close()
        os.waitpid(pid, 0)
    kind, _, text = msg.partition(b"\0")
    if kind != b"ok":
        for fd in fds:
            os.close(fd)
        raise PrivsepError(text.decode("utf-8", "surrogateescape") or
                           f"the check as uid {uid} failed")
    return text.decode("utf-8", "surrogateescape"), list(fds)


# SCM_RIGHTS carries C ints; packed here without the array module (an extension whose load
# cost the accounting program ~5 ms, measured, on the step's critical path).
_INT = 4


def _send_fds(sock, msg: bytes, fds: List[int]) -> None:
    import _socket
    data = b"".join(fd.to_bytes(_INT, sys.byteorder, signed=True) for fd in fds)
    anc = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, data)] if fds else []
    sock.sendmsg([msg], anc)


def _recv_fds(sock, size: int, maxfds: int) -> Tuple[bytes, List[int]]:
    """One message and the descriptors that came with it (as socket.recv_fds)."""
    import _socket
    # MSG_CMSG_CLOEXEC: received descriptors are otherwise inherited by every program root
    # starts next (scontrol).
    msg, anc, _flags, _addr = sock.recvmsg(size, _socket.CMSG_LEN(maxfds * 4),
                                           _socket.MSG_CMSG_CLOEXEC)
    fds = []
    for level, kind, data in anc:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += [int.from_bytes(data[i:i + _INT], sys.byteorder, signed=True)
                    for i in range(0, len(data) - len(data) % _INT, _INT)]
    return msg, fds


def open_as_user(path: str, uid: int, gid: int, groups: Sequence[int] = (),
                 want: str = "file") -> Tuple[int, str]:
    """Open a user-named ``path`` as that user; returns (fd, real path) to root."""
    def opener():
        fd, real = open_checked(path, want)
        return real, [fd]
    real, fds = run_as_user(opener, uid, gid, groups)
    return fds[0], real
