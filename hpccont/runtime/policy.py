"""Site policy on images, shared by the runtime and the batch-system hooks (which refuse a job
before it starts).  Plain functions over the config's ``images`` section; a partial section
(as a hook may hold) means the defaults for what it lacks."""
from __future__ import annotations

import os

from ..errors import PolicyError

KIND_SWITCH = {"sandbox": "allow_sandbox", "squashfs": "allow_squashfs"}


def under_any(path: str, dirs: list) -> bool:
    """Is ``path``, symlinks resolved, inside one of ``dirs``?  (A link placed in an allowed
    directory must not let an image from elsewhere in.)"""
    real = os.path.realpath(path)
    for d in dirs:
        top = os.path.realpath(d)
        if real == top or real.startswith(top.rstrip("/") + "/"):
            return True
    return False


def check_image(path: str, kind: str, images: dict) -> None:
    allowed = images.get("allowed_dirs") or []
    if allowed and not under_any(path, allowed):
        raise PolicyError(f"container image {path} is outside the allowed image directories "
                          f"({', '.join(allowed)})")
    switch = KIND_SWITCH.get(kind)
    if switch and not images.get(switch, True):
        raise PolicyError(f"container image {path}: {kind} images are not allowed at this site")


def enforce_signature(image, signatures: dict) -> None:
    """The site switch ``signatures.require``, for every launch path (CLI, Slurm tasks and
    prepare, PBS tasks, module wrappers all plan through here).

    Fail closed: unsigned, badly signed and unsignable (squashfs, sandbox) images are refused;
    a verified image is remembered per user until it or a key file changes.  The file is opened
    once and everything after (verification, mount) uses that open file (``image.handle``):
    replacing the path after the check cannot slip another image in.
    """
    if not signatures.get("require"):
        return
    from ..image.sign import require_verified
    if image.kind == "sif" and not image.handle:
        image.handle = f"/proc/self/fd/{os.open(image.path, os.O_RDONLY | os.O_CLOEXEC)}"
    require_verified(image.path, image.kind, signatures.get("keyring") or [],
                     read=image.handle or image.path)
