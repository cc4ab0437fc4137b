"""Thin ctypes layer over the system calls the runtime needs.

Python 3.11 has no os.unshare/os.setns/mount/pivot_root, and importing ctypes costs ~5 ms,
so this module is imported only by ``apply`` (never while planning or printing a plan).
Each wrapper raises OSError with errno and a short description, which ``apply`` turns into a
one-line LaunchError naming the step that failed.
"""
import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

# <sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUTS = 0x04000000

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
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source, target: str, fstype, flags: int = 0, data=None) -> None:
    enc = (lambda s: s.encode() if isinstance(s, str) else s)
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {target}")


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    nr = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise OSError(38, f"pivot_root: unknown syscall number on {os.uname().machine}")
    _check(_libc.syscall(ctypes.c_long(nr), new_root.encode(), put_old.encode()), "pivot_root")


def prctl(option: int, arg2: int = 0) -> None:
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(0),
                       ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl")


def ioctl_int(fd: int, request: int, arg: int = 0) -> int:
    return _check(_libc.ioctl(ctypes.c_int(fd), ctypes.c_ulong(request), ctypes.c_ulong(arg)),
                  "ioctl")


def locked_flags(path: str) -> int:
    """MS_* flags a bind remount of ``path`` must keep (see ST_* comment above)."""
    f = os.statvfs(path).f_flag
    return sum(ms for st, ms in _ST_TO_MS if f & st)


class _LoopInfo64(ctypes.Structure):
    _fields_ = [("lo_device", ctypes.c_uint64), ("lo_inode", ctypes.c_uint64),
                ("lo_rdevice", ctypes.c_uint64), ("lo_offset", ctypes.c_uint64),
                ("lo_sizelimit", ctypes.c_uint64), ("lo_number", ctypes.c_uint32),
                ("lo_encrypt_type", ctypes.c_uint32), ("lo_encrypt_key_size", ctypes.c_uint32),
                ("lo_flags", ctypes.c_uint32), ("lo_file_name", ctypes.c_uint8 * LO_NAME_SIZE),
                ("lo_crypt_name", ctypes.c_uint8 * LO_NAME_SIZE),
                ("lo_encrypt_key", ctypes.c_uint8 * LO_KEY_SIZE),
                ("lo_init", ctypes.c_uint64 * 2)]


class _LoopConfig(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_uint32), ("block_size", ctypes.c_uint32),
                ("info", _LoopInfo64), ("__reserved", ctypes.c_uint64 * 8)]


def attach_loop(image_fd: int, offset: int, size: int, attempts: int = 20) -> tuple:
    """Attach ``image_fd`` to a free loop device, read-only and autoclear.

    Returns (device path, open fd of the device): close the fd once the device is mounted.

    Autoclear: the kernel detaches the device when its last user (the mount) goes away, so a
    container that ends, however it ends, leaves no loop device behind.  LOOP_CTL_GET_FREE and
    LOOP_CONFIGURE are not atomic together: another process may take the same device in between
    (EBUSY), so we retry with the next free one.
    """
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(attempts):
            n = ioctl_int(ctl, LOOP_CTL_GET_FREE)
            dev = f"/dev/loop{n}"
            fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
            cfg = _LoopConfig()
            cfg.fd = image_fd
            cfg.info.lo_offset = offset
            cfg.info.lo_sizelimit = size
            cfg.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR
            ret = _libc.ioctl(ctypes.c_int(fd), ctypes.c_ulong(LOOP_CONFIGURE), ctypes.byref(cfg))
            err = ctypes.get_errno()
            if ret == 0:
                return dev, fd
            os.close(fd)
            if err != 16:  # EBUSY: raced with another attach
                raise OSError(err, f"LOOP_CONFIGURE {dev}: {os.strerror(err)}")
        raise OSError(16, "no free loop device after retries")
    finally:
        os.close(ctl)
