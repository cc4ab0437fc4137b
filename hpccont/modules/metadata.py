"""What a module needs to know about an image: labels, %help, commands, digest, size.

Read without mounting anything, so that an admin can generate modules for a whole image
directory on a login node: sandbox directories are read directly, squashfs filesystems (plain
files, or the primary partition inside a SIF) through ``unsquashfs -cat`` at the partition's
offset.  The ``/.singularity.d`` layout (``labels.json``, ``runscript.help``) is the same for
images built by hpccont and by Apptainer.
"""
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..errors import ImageError
from ..image import squashfs

LABELS_FILE = "/.singularity.d/labels.json"
HELP_FILE = "/.singularity.d/runscript.help"
SCIF_APPS = "/scif/apps"

# Label naming the commands a module exposes: "python pip" or "python=/opt/py/bin/python,pip".
COMMANDS_LABEL = "org.hpccont.commands"

# Labels tried in order for the module name, version and one-line description.
NAME_LABELS = ("org.opencontainers.image.title", "org.label-schema.name")
VERSION_LABELS = ("org.opencontainers.image.version", "org.label-schema.version")
DESCRIPTION_LABELS = ("org.opencontainers.image.description", "org.label-schema.description",
                      "description")

COMMAND_NAME = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9._+-]*$")


@dataclass
class Command:
    """A wrapper ``name`` on the host PATH running ``target`` in the image (``app``: a SCIF app)."""
    name: str
    target: str
    app: Optional[str] = None


@dataclass
class ImageMetadata:
    path: str
    kind: str                                   # "sif" | "squashfs" | "sandbox"
    labels: Dict[str, str] = field(default_factory=dict)
    help: str = ""
    apps: List[str] = field(default_factory=list)
    size: int = 0
    mtime_ns: int = 0
    signed: bool = False

    def label(self, keys: Tuple[str, ...]) -> Optional[str]:
        for k in keys:
            v = self.labels.get(k)
            if v not in (None, ""):
                return str(v)
        return None

    @property
    def stamp(self) -> List[int]:
        return [self.size, self.mtime_ns]


def parse_command(spec: str) -> Command:
    """``--command`` value: ``NAME`` or ``NAME=PATH`` (PATH inside the image)."""
    name, _, target = spec.partition("=")
    name = name.strip()
    if not COMMAND_NAME.match(name) or name.startswith("image-"):
        raise ImageError(f"bad command name {name!r} (letters, digits, '._+-'; "
                         "'image-*' names are reserved)")
    return Command(name, target.strip() or name)


def commands_from_label(value: str) -> List[Command]:
    return [parse_command(w) for w in re.split(r"[\s,]+", value.strip()) if w]


def discover_commands(meta: ImageMetadata) -> List[Command]:
    """Commands of an image when the admin named none: the commands label, else its SCIF apps."""
    value = meta.labels.get(COMMANDS_LABEL)
    if value:
        return commands_from_label(str(value))
    return [Command(app, app, app=app) for app in meta.apps]


def image_kind(path: str) -> str:
    """sif | squashfs | sandbox; ImageError (one line) when it is none of them."""
    from ..image.source import open_image
    return open_image(path).kind


def _sif_partition(path: str) -> Tuple[int, bool]:
    """(offset of the primary squashfs partition, whether the SIF carries a signature)."""
    from ..image import sif
    image = sif.SifImage.open(path)
    part = image.primary_partition()
    if part is None or part.fs_type != sif.FS_SQUASH:
        raise ImageError(f"{path}: SIF has no squashfs system partition")
    return part.offset, bool(image.find(sif.DATA_SIGNATURE))


class ImageReader:
    """Reads single files and directory listings out of an image, without mounting it."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.kind = image_kind(self.path)
        self.offset, self.signed = (_sif_partition(self.path) if self.kind == "sif" else (0, False))

    def read_text(self, inner: str) -> Optional[str]:
        if self.kind == "sandbox":
            # inside the sandbox: its links must not make us (root, say) read a host file
            from ..rootpath import read_in_root
            data = read_in_root(self.path, inner)
            return None if data is None else data.decode("utf-8", "replace")
        data = squashfs.cat_file(self.path, inner, self.offset)
        return None if data is None else data.decode("utf-8", "replace")

    def list_dir(self, inner: str) -> List[str]:
        if self.kind == "sandbox":
            from ..rootpath import open_in_root
            try:
                fd = open_in_root(self.path, inner, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                return []
            try:
                return sorted(os.listdir(fd))
            finally:
                os.close(fd)
        try:
            paths = squashfs.list_paths(self.path, self.offset, under=inner)
        except ImageError:
            return []
        prefix = inner.strip("/") + "/"
        names = {p[len(prefix):].split("/")[0] for p in paths if p.startswith(prefix)}
        return sorted(n for n in names if n)


def read_metadata(path: str) -> ImageMetadata:
    reader = ImageReader(path)
    st = os.stat(reader.path)
    meta = ImageMetadata(reader.path, reader.kind, size=st.st_size, mtime_ns=st.st_mtime_ns,
                         signed=reader.signed)
    raw = reader.read_text(LABELS_FILE)
    if raw:
        try:
            labels = json.loads(raw)
        except (ValueError, RecursionError):   # RecursionError: nested too deep
            labels = {}
        if isinstance(labels, dict):
            meta.labels = {str(k): str(v) for k, v in labels.items()}
    meta.help = (reader.read_text(HELP_FILE) or "").strip()
    meta.apps = [a for a in reader.list_dir(SCIF_APPS) if COMMAND_NAME.match(a)]
    return meta


def sha256_file(path: str, chunk: int = 4 << 20) -> str:
    """``sha256:<hex>`` of a file (of a sandbox directory: of its sorted file list and contents)."""
    h = hashlib.sha256()
    try:
        if os.path.isdir(path):
            _hash_tree(h, path)
        else:
            with open(path, "rb") as f:
                for buf in iter(lambda: f.read(chunk), b""):
                    h.update(buf)
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror}") from None
    return "sha256:" + h.hexdigest()


def _hash_tree(h, root: str) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in sorted(filenames):
            p = os.path.join(dirpath, n)
            h.update(os.path.relpath(p, root).encode() + b"\0")
            if os.path.islink(p):
                h.update(b"->" + os.readlink(p).encode())
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    for buf in iter(lambda: f.read(1 << 20), b""):
                        h.update(buf)
