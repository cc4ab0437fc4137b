"""Sandbox images: a plain directory holding a container's root filesystem.

Only the stdlib is used: ``open_image`` calls ``check_sandbox`` on every ``hpccont exec`` of a
directory image.
"""
import os

# A directory counts as a root filesystem when it has one of these.  Apptainer accepts any
# directory, but then `exec` fails later with a confusing "no such file"; asking for one of
# the usual top-level entries turns a wrong path (a data directory, a home) into a clear error.
ROOTFS_MARKERS = (".singularity.d", "bin", "usr", "etc")

def is_rootfs(path: str) -> bool:
    return any(os.path.lexists(os.path.join(path, m)) for m in ROOTFS_MARKERS)


def check_sandbox(path: str) -> None:
    """Raise ImageError unless ``path`` is a directory the caller can use as a root filesystem."""
    from ..errors import ImageError
    if not os.path.isdir(path):
        raise ImageError(f"{path}: not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ImageError(f"{path}: permission denied")
    if not is_rootfs(path):
        raise ImageError(f"{path}: directory is not a container root filesystem "
                         f"(none of {', '.join('/' + m for m in ROOTFS_MARKERS)})")

