"""Persistent writable layers, planned: ``--overlay PATH[:ro]``, ``--writable``, a SIF's overlay
partition.  Plain data out (dicts in ``LaunchPlan.overlays``); ``runtime/overlay.py`` mounts them.

An overlay is one of, as Apptainer has them:
  a directory      its ``upper/`` (and ``work/``) subdirectories, made when missing; read-only,
                   a directory without ``upper/`` is itself the layer
  an ext3 image    a file made by ``overlay create`` (or Apptainer's), whose ``upper/`` and
                   ``work/`` directories are the layer
  a SIF            its overlay partition (partition type Overlay, filesystem Ext3)
At most one overlay is writable; the others are ``:ro`` layers below it.  A SIF image that has
an overlay partition uses it read-only, writable with ``--writable``.  ``--writable`` on a
sandbox directory makes the directory itself the writable root (it must be the caller's).
"""
from __future__ import annotations

import os
import stat

from ..errors import ImageError, UsageError

EXT3_MAGIC_AT = 1080          # s_magic: superblock at 1024, field at 56
EXT_MAGIC = b"\x53\xef"


def plan_overlays(specs: list, image, writable: bool, writable_tmpfs: bool) -> list:
    """The overlay list of a launch, top layer first (the writable one, if any, first)."""
    out = [parse_overlay(s) for s in specs]
    if writable:
        if writable_tmpfs:
            raise UsageError("--writable and --writable-tmpfs cannot be used together")
        if any(not o["readonly"] for o in out):
            raise UsageError("--writable cannot be used with a writable --overlay "
                             "(add :ro to the overlay, or leave out --writable)")
    if image.kind == "sif":
        if image.overlay_offset:
            out.append({"kind": "ext3", "path": image.path, "offset": image.overlay_offset,
                        "size": image.overlay_size, "readonly": not writable,
                        "why": "overlay partition of the image"})
        elif writable:
            raise ImageError(f"--writable: {image.path} has no overlay partition (add one "
                             f"with 'hpccont overlay create --size 1024 {image.path}', or use "
                             "--writable-tmpfs)")
    elif writable and image.kind == "squashfs":
        raise ImageError(f"--writable: {image.path} is a read-only squashfs image (use "
                         "--overlay DIR or --writable-tmpfs)")
    elif writable and image.kind == "sandbox":
        check_own_sandbox(image.path)
    if sum(not o["readonly"] for o in out) > 1:
        raise UsageError("only one overlay may be writable: add :ro to the others")
    out.sort(key=lambda o: o["readonly"])          # stable: the writable one on top
    return out


def parse_overlay(spec: str) -> dict:
    path, readonly = spec, False
    if spec.endswith(":ro"):
        path, readonly = spec[:-3], True
    elif spec.endswith(":rw"):
        path = spec[:-3]
    if not path:
        raise UsageError(f"--overlay {spec!r}: empty path")
    apath = os.path.abspath(path)
    try:
        st = os.stat(apath)
    except FileNotFoundError:
        raise ImageError(f"--overlay {path}: no such file or directory (make one with "
                         f"'hpccont overlay create --size 1024 {path}' or mkdir)") from None
    except OSError as e:
        raise ImageError(f"--overlay {path}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        if not readonly and not os.access(apath, os.W_OK):
            raise ImageError(f"--overlay {path}: directory not writable by you (add :ro to "
                             "use it read-only)")
        return {"kind": "dir", "path": apath, "offset": 0, "size": 0, "readonly": readonly,
                "why": "--overlay"}
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"--overlay {path}: not a directory, ext3 image or SIF file")
    if not os.access(apath, os.R_OK if readonly else os.R_OK | os.W_OK):
        raise ImageError(f"--overlay {path}: permission denied"
                         + ("" if readonly else " (read and write needed; add :ro?)"))
    with open(apath, "rb") as f:
        head = f.read(EXT3_MAGIC_AT + 2)
    if head[EXT3_MAGIC_AT:EXT3_MAGIC_AT + 2] == EXT_MAGIC:
        return {"kind": "ext3", "path": apath, "offset": 0, "size": st.st_size,
                "readonly": readonly, "why": "--overlay"}
    from ..image import sif
    if sif.looks_like_sif(head):
        part = sif_overlay_partition(apath)
        if part is None:
            raise ImageError(f"--overlay {path}: SIF file without an overlay partition")
        return {"kind": "ext3", "path": apath, "offset": part[0], "size": part[1],
                "readonly": readonly, "why": "--overlay: SIF overlay partition"}
    raise ImageError(f"--overlay {path}: not a directory, ext3 image or SIF file with an "
                     "overlay partition")


def sif_overlay_partition(path: str):
    """(offset, size) of the SIF's ext3 overlay partition (Apptainer's: the first one), or None."""
    from ..image import sif
    try:
        img = sif.read_sif(path)
    except (OSError, ImageError):
        return None
    d = sif.overlay_partition(img.descriptors)
    return (d.offset, d.size) if d else None


def check_own_sandbox(path: str) -> None:
    """--writable on a sandbox: the caller must own it (root may use any)."""
    if os.geteuid() == 0:
        return
    st = os.stat(path)
    if st.st_uid != os.geteuid() or not os.access(path, os.W_OK):
        raise ImageError(f"--writable: sandbox {path} is not yours to write (owned by uid "
                         f"{st.st_uid}); use --overlay DIR or --writable-tmpfs")
