"""Where a container's root filesystem comes from: ``open_image(path) -> ImageSource``.

Called on every ``hpccont exec``, so it costs a stat, an open and one or two preads: the first
read takes the SIF header and the default descriptor table together.  Every way an image can be
bad is a one-line ImageError/SifError naming the file.
"""
import os
import stat

from ..errors import ImageError, SifError
from ..record import record
from . import sif
from .sandbox import check_sandbox

SQUASHFS_MAGIC = b"hsqs"
SQUASHFS_SUPERBLOCK = 96
SQUASHFS_BYTES_USED_AT = 40     # u64 in the superblock: bytes the filesystem occupies
# First read: header + a default descriptor table (4096 + 48 * 585 = 32176), page rounded.
FIRST_READ = 32768


@record
class ImageSource:
    """Where a container's root filesystem comes from (part of every LaunchPlan)."""
    kind: str            # "sif" | "squashfs" | "sandbox"
    path: str            # absolute host path
    offset: int = 0      # byte offset of the filesystem inside the file
    size: int = 0        # bytes of the filesystem (0: to end of file)
    fs_type: str = "squashfs"   # "squashfs" | "ext3" | "dir"
    handle: str = ""     # "/proc/self/fd/N": the file as verified, kept open (signature policy)
    overlay_offset: int = 0   # a SIF's overlay partition (sif.overlay_partition; 0: none),
    overlay_size: int = 0     # read with the header so that planning opens the image once


# SIF partition fs type -> ImageSource.fs_type (None: the runtime cannot mount it)
PARTITION_FS = {sif.FS_SQUASH: "squashfs", sif.FS_EXT3: "ext3"}


def open_image(path: str) -> ImageSource:
    """Identify a SIF file, a plain squashfs file or a sandbox directory."""
    apath = os.path.abspath(path)
    try:
        st = os.stat(apath)
    except (FileNotFoundError, NotADirectoryError):
        raise ImageError(f"image not found: {path}") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    if stat.S_ISDIR(st.st_mode):
        check_sandbox(apath)
        return ImageSource(kind="sandbox", path=apath, fs_type="dir")
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"{path}: not an image file (not a regular file or directory)")
    try:
        fd = os.open(apath, os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except OSError as e:
        raise ImageError(f"cannot open image {path}: {e.strerror}") from None
    try:
        raw = os.pread(fd, FIRST_READ, 0)
        if raw[:4] == SQUASHFS_MAGIC:
            return _squashfs_source(path, apath, raw, st.st_size)
        start = _legacy_image_offset(raw)
        if start:
            _check_squashfs(path, raw[start:], st.st_size - start, "Singularity 2 image")
            return ImageSource(kind="squashfs", path=apath, offset=start,
                               size=st.st_size - start, fs_type="squashfs")
        if sif.looks_like_sif(raw):
            return _sif_source(path, apath, raw, st.st_size, fd)
    except OSError as e:
        raise ImageError(f"cannot read image {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if not raw:
        raise ImageError(f"{path}: empty file, not an image")
    raise ImageError(f"{path}: not a SIF, squashfs or sandbox image")


def _legacy_image_offset(raw: bytes) -> int:
    """Singularity 2.4-2.6 images ("simg"): a ``#!/usr/bin/env run-singularity`` line and the
    squashfs filesystem right after it.  Returns its offset, 0 when ``raw`` is no such file."""
    if not raw.startswith(b"#!"):
        return 0
    end = raw.find(b"\n", 0, 256)
    return end + 1 if end > 0 and raw[end + 1:end + 5] == SQUASHFS_MAGIC else 0


def _squashfs_source(path: str, apath: str, raw: bytes, size: int) -> ImageSource:
    _check_squashfs(path, raw, size, "squashfs image")
    return ImageSource(kind="squashfs", path=apath, offset=0, size=size, fs_type="squashfs")


def _check_squashfs(path: str, superblock: bytes, room: int, what: str) -> None:
    if len(superblock) < SQUASHFS_SUPERBLOCK:
        raise ImageError(f"{path}: truncated {what} (superblock cut short)")
    used = int.from_bytes(superblock[SQUASHFS_BYTES_USED_AT:SQUASHFS_BYTES_USED_AT + 8], "little")
    if used > room:
        raise ImageError(f"{path}: truncated {what} ({used} bytes used, {room} present)")


def _sif_source(path: str, apath: str, raw: bytes, size: int, fd: int) -> ImageSource:
    header, descriptors = sif.parse(raw, path, size, fd)
    part = next((d for d in descriptors
                 if d.data_type == sif.DATA_PARTITION and d.part_type == sif.PART_PRIMSYS), None)
    if part is None:
        raise SifError(f"{path}: SIF file has no primary system partition")
    fs = PARTITION_FS.get(part.fs_type)
    if fs is None:
        name = sif.FS_TYPES.get(part.fs_type, f"type {part.fs_type}")
        raise SifError(f"{path}: primary partition has an unsupported filesystem ({name})")
    if fs == "squashfs":
        sb = os.pread(fd, SQUASHFS_SUPERBLOCK, part.offset)
        if sb[:4] != SQUASHFS_MAGIC:
            raise SifError(f"{path}: corrupted SIF: primary partition (object {part.id}) "
                           "is not a squashfs filesystem")
        _check_squashfs(path, sb, part.size, "SIF partition")
    overlay = sif.overlay_partition(descriptors)
    return ImageSource(kind="sif", path=apath, offset=part.offset, size=part.size, fs_type=fs,
                       overlay_offset=overlay.offset if overlay else 0,
                       overlay_size=overlay.size if overlay else 0)
