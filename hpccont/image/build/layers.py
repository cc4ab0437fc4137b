"""Applying OCI/Docker image layers (tar files) to a rootfs, in order, with whiteouts.

Per the OCI image spec (layer.md): ``.wh.NAME`` deletes NAME from the layers below, and
``.wh..wh..opq`` in a directory hides everything the layers below put there.  Both apply only to
lower layers, so each layer's deletions are done first and its entries extracted afterwards.
Device nodes cannot be created in a user namespace and are skipped there, as /dev is bound from
the host at run time anyway.
"""
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from typing import IO, List, Tuple

from ...errors import BuildError
from .rootpath import clean_member_name, resolve

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"


@dataclass
class LayerPlan:
    deletions: List[str] = field(default_factory=list)       # paths removed from lower layers
    opaque_dirs: List[str] = field(default_factory=list)     # dirs emptied of lower content
    entries: List[tarfile.TarInfo] = field(default_factory=list)


def plan_layer(members: List[tarfile.TarInfo]) -> LayerPlan:
    plan = LayerPlan()
    for m in members:
        name = clean_member_name(m.name)
        head, _, base = name.rpartition("/")
        if base == OPAQUE:
            plan.opaque_dirs.append(head)
        elif base.startswith(WHITEOUT_PREFIX):
            plan.deletions.append(f"{head}/{base[len(WHITEOUT_PREFIX):]}".lstrip("/"))
        elif name:
            plan.entries.append(m)
    return plan


def apply_layer(fileobj: IO[bytes], root: str, label: str) -> None:
    try:
        with tarfile.open(fileobj=fileobj, mode="r:*") as tf:
            plan = plan_layer(tf.getmembers())
            for d in plan.opaque_dirs:
                _empty_dir(resolve(root, d))
            for p in plan.deletions:
                _remove(resolve(root, p, follow_last=False))
            dirs: List[Tuple[str, tarfile.TarInfo]] = []
            for m in plan.entries:
                path = _extract(tf, m, root)
                if m.isdir() and path:
                    dirs.append((path, m))
            for path, m in reversed(dirs):  # after their contents, or writing them resets mtime
                _set_attrs(path, m)
    except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as e:
        if isinstance(e, OSError) and e.errno == 28:
            raise BuildError(f"{label}: no space left while unpacking (see --tmpdir)") from None
        raise BuildError(f"{label}: cannot unpack layer: {e}") from None


def _empty_dir(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        for name in os.listdir(path):
            _remove(os.path.join(path, name))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _extract(tf: tarfile.TarFile, m: tarfile.TarInfo, root: str) -> str:
    name = clean_member_name(m.name)
    head, _, base = name.rpartition("/")
    parent = resolve(root, head)
    os.makedirs(parent, exist_ok=True)
    path = os.path.join(parent, base)
    if m.isdir():
        if os.path.lexists(path) and not (os.path.isdir(path) and not os.path.islink(path)):
            _remove(path)
        os.makedirs(path, exist_ok=True)
        return path
    if os.path.lexists(path):
        _remove(path)
    if m.isreg():
        src = tf.extractfile(m)
        with open(path, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    elif m.issym():
        os.symlink(m.linkname, path)
    elif m.islnk():
        target = resolve(root, clean_member_name(m.linkname), follow_last=False)
        os.link(target, path, follow_symlinks=False)
        return ""
    elif m.isfifo():
        os.mkfifo(path)
    elif m.ischr() or m.isblk():
        kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
        try:
            os.mknod(path, kind | 0o600, os.makedev(m.devmajor, m.devminor))
        except PermissionError:
            return ""
    else:
        return ""
    _set_attrs(path, m)
    return path


def _set_attrs(path: str, m: tarfile.TarInfo) -> None:
    try:
        os.lchown(path, m.uid, m.gid)
    except OSError:
        pass  # ids not mapped in a single-id user namespace: the file stays the builder's
    if not m.issym():
        os.chmod(path, stat.S_IMODE(m.mode))  # after chown, which clears set-id bits
    os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)
