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
