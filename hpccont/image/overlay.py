"""``hpccont overlay create``: ext3 overlay images, alone or as a SIF's overlay partition.

As Apptainer's ``overlay create`` makes them, so that either tool uses the other's: an ext3
filesystem (``mkfs.ext3 -d``) holding ``upper/`` and ``work/`` (and ``upper/DIR`` for each
``--create-dir``), owned by the caller, mode 0755 (0777 when the caller's uid or gid does not
fit in 16 bits); the image file mode 0600.  Into a SIF it goes as one more object appended
at the end: a Partition with filesystem Ext3 and partition type Overlay, the primary
partition's architecture (the host's when unknown), group 1, no link, aligned to 4096 bytes,
as the SIF reference code's AddObject writes it.  Signed SIFs and SIFs that already have one
are refused, as Apptainer does.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from ..errors import ImageError, UsageError
from . import sif

MIN_SIZE_MIB = 64
PARTITION_ALIGN = 4096


def create(path: str, size_mib: int, sparse: bool = False, dirs: tuple = ()) -> str:
    """Make the overlay; returns "image" or "sif" (what was written)."""
    if size_mib < MIN_SIZE_MIB:
        raise UsageError(f"image size must be equal or greater than {MIN_SIZE_MIB} MiB")
    mkfs = shutil.which("mkfs.ext3") or next(
        (p for p in ("/sbin/mkfs.ext3", "/usr/sbin/mkfs.ext3") if os.access(p, os.X_OK)), None)
    if not mkfs:
        raise ImageError("mkfs.ext3 is not installed (Debian: e2fsprogs)")
    into_sif = _check_destination(path)
    for d in dirs:
        if not d.startswith("/") or ".." in d.split("/"):
            raise UsageError(f"--create-dir {d!r}: must be an absolute path inside the "
                             "container, without '..'")
    tmp = path + ".ext3"
    tmpdir = None
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise ImageError(f"cannot create {tmp}: {e.strerror}") from None
        try:
            size = size_mib << 20
            if sparse:
                os.ftruncate(fd, size)
            else:
                try:
                    os.posix_fallocate(fd, 0, size)
                except OSError:
                    _write_zeros(fd, size)
            os.fchmod(fd, 0o600)
        except OSError as e:
            raise ImageError(f"cannot write {tmp}: {e.strerror}") from None
        finally:
            os.close(fd)
        tmpdir = tempfile.mkdtemp(prefix="overlay-", dir=os.path.dirname(os.path.abspath(path)))
        perm = 0o777 if os.getuid() > 65535 or os.getgid() > 65535 else 0o755
        old = os.umask(0)
        try:
            for d in ["upper", "work"] + [f"upper{d}" for d in dirs]:
                os.makedirs(os.path.join(tmpdir, d), perm, exist_ok=True)
        finally:
            os.umask(old)
        r = subprocess.run([mkfs, "-q", "-F", "-d", tmpdir, tmp], capture_output=True, text=True)
        if r.returncode != 0:
            raise ImageError(f"while creating ext3 partition in {tmp}: "
                             f"{(r.stderr or r.stdout).strip().splitlines()[-1:] or r.returncode}")
        if into_sif:
            add_overlay_partition(path, tmp)
        else:
            os.rename(tmp, path)
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return "sif" if into_sif else "image"


def _write_zeros(fd: int, size: int) -> None:
    block = bytes(1 << 20)
    done = 0
    while done < size:
        done += os.pwrite(fd, block[:min(len(block), size - done)], done)


def _check_destination(path: str) -> bool:
    """True when ``path`` is a SIF that may take an overlay partition; False when it does
    not exist yet; an error for anything else."""
    if not os.path.exists(path):
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise ImageError(f"{path}: directory {parent} does not exist")
        return False
    if os.path.isdir(path):
        raise ImageError(f"{path}: is a directory (an overlay directory needs no creating: "
                         "use it with --overlay as it is)")
    with open(path, "rb") as f:
        head = f.read(1082)
    if head[1080:1082] == b"\x53\xef":
        raise ImageError(f"EXT3 overlay image {path} already exists")
    if not sif.looks_like_sif(head):
        raise ImageError(f"{path}: destination image must be SIF image")
    if not os.access(path, os.W_OK):
        raise ImageError(f"{path}: permission denied (the SIF must be writable)")
    img = sif.read_sif(path)
    prim = img.primary_partition()
    if prim is not None and prim.fs_type == sif.FS_ENCRYPTED_SQUASH:
        raise ImageError(f"encrypted root FS partition in {path}: could not add writable overlay")
    if img.find(sif.DATA_SIGNATURE):
        raise ImageError(f"SIF image {path} is signed: could not add writable overlay")
    for d in img.find(sif.DATA_PARTITION):
        if d.part_type == sif.PART_OVERLAY and d.fs_type == sif.FS_EXT3:
            raise ImageError(f"a writable overlay partition already exists in {path} "
                             f"(ID: {d.id})")
    if img.header.descriptors_free <= 0:
        raise ImageError(f"{path}: no free descriptor left for an overlay partition")
    return True


def add_overlay_partition(path: str, ext3: str) -> sif.Descriptor:
    """Append ``ext3`` to the SIF at ``path`` as its overlay partition (see the docstring)."""
    img = sif.read_sif(path)
    h = img.header
    prim = img.primary_partition()
    arch = prim.part_arch if prim is not None else "unknown"
    if arch == "unknown":
        arch = sif.host_arch()
    t = sif.build_time()
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        table = os.pread(fd, h.descriptors_size, h.descriptors_offset)
        slot = next(i for i in range(h.descriptors_total)
                    if not table[i * sif.DESCRIPTOR_SIZE + 4])
        unaligned = os.fstat(fd).st_size
        offset = sif.next_aligned(unaligned, PARTITION_ALIGN)
        size = sif._copy_into(fd, ext3, offset)
        d = sif.Descriptor(sif.DATA_PARTITION, True, slot + 1, sif.GROUP_MASK | sif.DEFAULT_GROUP,
                           0, offset, size, offset - unaligned + size, t, t, 0, 0, "",
                           sif.partition_extra(sif.FS_EXT3, sif.PART_OVERLAY, arch))
        sif._write_all(fd, d.pack(), h.descriptors_offset + slot * sif.DESCRIPTOR_SIZE)
        h.descriptors_free -= 1
        h.data_size = offset + size - h.data_offset
        h.modified_at = t
        sif._write_all(fd, h.pack(), 0)
        os.fsync(fd)
    except OSError as e:
        raise ImageError(f"while adding ext3 overlay partition to {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    return d
