"""Thin layer over the system calls the runtime needs, through the C-call machinery of
``_ctypes``.

Python 3.11 has no os.unshare/os.setns/mount/pivot_root.  The ``ctypes`` package defines some
seventy classes on import (~1.5 ms, on every task of every job); the four C types and the
function-pointer class used here are declared directly on ``_ctypes``, its C core, exactly as
``ctypes/__init__.py`` declares them.  This module is imported only by the runtime's code that
acts on a plan (``apply``, ``join``, ``prefetch``, ``cleanup``), never while planning or printing
one.  Each wrapper raises OSError with errno and a short
description, which ``apply`` turns into a one-line LaunchError naming the step that failed.
"""
import os

import _ctypes


class c_int(_ctypes._SimpleCData):
    _type_ = "i"


class c_long(_ctypes._SimpleCData):
    _type_ = "l"


class c_ulong(_ctypes._SimpleCData):
    _type_ = "L"


class _Function(_ctypes.CFuncPtr):
    """A C function returning int; errno is saved right after the call (use_errno)."""
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = c_int


class _Process:
    """The symbols of this process (dlopen(NULL)): libc's are there, in the global scope."""
    _handle = _ctypes.dlopen(None, os.RTLD_LOCAL)


class _Libc:
    """``_libc.name(...)`` calls the C function ``name``; looked up once, on first use."""

    def __getattr__(self, name: str) -> _Function:
        function = _Function((name, _Process))
        setattr(self, name, function)
        return function


_libc = _Libc()
get_errno = _ctypes.get_errno

# <sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000

# <sys/mount.h>
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_RELATIME = 0x200000
MNT_DETACH = 0x2

# statvfs f_flag bits that are "locked" on a mount inherited from a more privileged namespace:
# a bind remount inside a user namespace must keep them, or the kernel answers EPERM.
ST_RDONLY, ST_NOSUID, ST_NODEV, ST_NOEXEC = 1, 2, 4, 8
ST_NOATIME, ST_NODIRATIME, ST_RELATIME = 1024, 2048, 4096
_ST_TO_MS = ((ST_RDONLY, MS_RDONLY), (ST_NOSUID, MS_NOSUID), (ST_NODEV, MS_NODEV),
             (ST_NOEXEC, MS_NOEXEC), (ST_NOATIME, MS_NOATIME), (ST_NODIRATIME, MS_NODIRATIME),
             (ST_RELATIME, MS_RELATIME))

# <sys/prctl.h>
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
SIGKILL = 9   # without importing signal (and enum) on the hot path

# pivot_root has no glibc wrapper; syscall numbers per machine.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "riscv64": 41}

# <linux/loop.h>
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_NAME_SIZE = 64
LO_KEY_SIZE = 32

# <linux/nsfs.h>
NS_GET_PARENT = 0xB702


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def unshare(flags: int) -> None:
    _check(_libc.unshare(c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(c_int(fd), c_int(nstype)), "setns")


def mount(source, target: str, fstype, flags: int = 0, data=None) -> None:
    enc = (lambda s: s.encode() if isinstance(s, str) else s)
    _check(_libc.mount(enc(source), enc(target), enc(fstype), c_ulong(flags), enc(data)),
           f"mount {target}")


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    nr = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise OSError(38, f"pivot_root: unknown syscall number on {os.uname().machine}")
    _check(_libc.syscall(c_long(nr), new_root.encode(), put_old.encode()), "pivot_root")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, c_ulong(len(raw))), "sethostname")


def prctl(option: int, arg2: int = 0) -> None:
    _check(_libc.prctl(c_int(option), c_ulong(arg2), c_ulong(0),
                       c_ulong(0), c_ulong(0)), "prctl")


def ioctl_int(fd: int, request: int, arg: int = 0) -> int:
    return _check(_libc.ioctl(c_int(fd), c_ulong(request), c_ulong(arg)),
                  "ioctl")


def locked_flags(path: str) -> int:
    """MS_* flags a bind remount of ``path`` must keep (see ST_* comment above)."""
    f = os.statvfs(path).f_flag
    return sum(ms for st, ms in _ST_TO_MS if f & st)


# struct loop_config { __u32 fd; __u32 block_size; struct loop_info64 info; __u64 reserved[8]; }
# with loop_info64 = 5 x u64 (device, inode, rdevice, offset, sizelimit), 4 x u32 (number,
# encrypt_type, encrypt_key_size, flags), file_name[64], crypt_name[64], encrypt_key[32],
# 2 x u64 init: 304 bytes, no padding.
_LOOP_CONFIG = "=II5Q4I64s64s32s2Q8Q"


def _loop_config(image_fd: int, offset: int, size: int, readonly: bool = True) -> bytes:
    import struct
    return struct.pack(_LOOP_CONFIG, image_fd, 0, 0, 0, 0, offset, size, 0, 0, 0,
                       (LO_FLAGS_READ_ONLY if readonly else 0) | LO_FLAGS_AUTOCLEAR,
                       b"", b"", b"", 0, 0,
                       *([0] * 8))


def attach_loop(image_fd: int, offset: int, size: int, attempts: int = 20,
                readonly: bool = True) -> tuple:
    """Attach ``image_fd`` to a free loop device, read-only and autoclear.

    Returns (device path, open fd of the device): close the fd once the device is mounted.

    Autoclear: the kernel detaches the device when its last user (the mount) goes away, so a
    container that ends, however it ends, leaves no loop device behind.  LOOP_CTL_GET_FREE and
    LOOP_CONFIGURE are not atomic together: another process may take the same device in between
    (EBUSY), so we retry with the next free one.
    """
    import fcntl
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(attempts):
            n = ioctl_int(ctl, LOOP_CTL_GET_FREE)
            dev = f"/dev/loop{n}"
            fd = os.open(dev, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
            try:
                fcntl.ioctl(fd, LOOP_CONFIGURE, _loop_config(image_fd, offset, size, readonly))
                return dev, fd
            except OSError as e:
                os.close(fd)
                if e.errno != 16:  # EBUSY: raced with another attach
                    raise OSError(e.errno, f"LOOP_CONFIGURE {dev}: {e.strerror}") from None
        raise OSError(16, "no free loop device after retries")
    finally:
        os.close(ctl)


# --- persistent overlays (runtime/overlay.py): the new mount API, capabilities -------------------
# x86_64 and the generic table (aarch64, riscv64) share these numbers.
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_CAPSET = 428, 429, {"x86_64": 126, "aarch64": 91,
                                                          "riscv64": 91, "ppc64le": 184}
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = 0o2000000
MOVE_MOUNT_F_EMPTY_PATH = 4
AT_FDCWD = -100
PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 47, 2
CAP_SYS_ADMIN = 21
SIGTERM = 15


def open_tree(path: str, flags: int) -> int:
    return _check(_libc.syscall(c_long(_SYS_OPEN_TREE), c_int(AT_FDCWD), path.encode(),
                                c_ulong(flags)), f"open_tree {path}")


def move_mount(from_fd: int, to_path: str) -> None:
    """Attach the detached mount ``from_fd`` (from open_tree) at ``to_path``."""
    _check(_libc.syscall(c_long(_SYS_MOVE_MOUNT), c_int(from_fd), b"", c_int(AT_FDCWD),
                         to_path.encode(), c_ulong(MOVE_MOUNT_F_EMPTY_PATH)),
           f"move_mount {to_path}")


def keep_capability_across_exec(cap: int) -> None:
    """Make ``cap`` ambient, so that a program this (non-root) process execs keeps it: every
    capability we hold becomes inheritable, then ``cap`` is raised in the ambient set."""
    import struct
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    full = (1 << (last + 1)) - 1
    lo, hi = full & 0xFFFFFFFF, full >> 32
    header = struct.pack("=Ii", 0x20080522, 0)          # _LINUX_CAPABILITY_VERSION_3
    data = struct.pack("=6I", lo, lo, lo, hi, hi, hi)   # effective, permitted, inheritable x2
    _check(_libc.syscall(c_long(_SYS_CAPSET[os.uname().machine]), header, data), "capset")
    _check(_libc.prctl(c_int(PR_CAP_AMBIENT), c_ulong(PR_CAP_AMBIENT_RAISE), c_ulong(cap),
                       c_ulong(0), c_ulong(0)), "prctl(PR_CAP_AMBIENT)")
