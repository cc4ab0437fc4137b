"""Paths inside a rootfs that is not (yet) our root.

Symlinks in an image are written for the image's own root: ``/var/run -> /run`` must lead to
ROOTFS/run, never to the host's /run.  Every write into a rootfs (layers, %files) resolves its
path here, as a chroot would, so an image cannot make the builder write outside it.
"""
from ... import rootpath as _rootpath
from ...errors import BuildError


def resolve(root: str, path: str, follow_last: bool = True) -> str:
    """Host path of ``path`` (absolute or relative to the image's /) inside ``root``; ``..``
    above the root stays at the root, as in a chroot."""
    return _rootpath.resolve(root, path, follow_last=follow_last, escape="clamp", error=BuildError)


def clean_member_name(name: str) -> str:
    """A layer entry's path relative to the image root; '' for the root itself."""
    parts = _rootpath.components(name)
    if ".." in parts:
        raise BuildError(f"layer entry {name!r} points outside the image ('..')")
    return "/".join(parts)
