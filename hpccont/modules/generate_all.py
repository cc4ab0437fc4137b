"""One module per image in a site's image directory.

Names come from the image's labels (``org.opencontainers.image.title``/``version``, then
Apptainer's ``org.label-schema.*``), else from the file name: ``tensorflow-2.4.sif`` ->
``tensorflow/2.4``, ``tool.sif`` -> ``tool/latest``.  Re-running changes nothing for images
that did not change: an image whose size and mtime match the module's stamp is not hashed again.
"""
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..errors import ImageError, UsageError
from .generate import (ModulePlan, apply_plan, make_spec, modulefile_path, plan_module,
                       read_stamp)
from .metadata import NAME_LABELS, VERSION_LABELS, ImageMetadata, read_metadata

IMAGE_SUFFIXES = (".sif", ".sqsh", ".squashfs", ".sqfs", ".img")
FILE_VERSION = re.compile(r"^(?P<name>.+?)[-_:](?P<version>v?\d[\w.+-]*)$")
DEFAULT_VERSION = "latest"
UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclass
class Outcome:
    image: str
    name: str = ""
    status: str = ""                 # "written" | "unchanged" | "skipped"
    detail: str = ""


@dataclass
class GenerateAllResult:
    outcomes: List[Outcome] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(o.status == "skipped" for o in self.outcomes)


def clean(part: str) -> str:
    part = UNSAFE.sub("-", part.strip()).strip("-.")
    return part or "image"


def name_from_file(path: str) -> Tuple[str, str]:
    base = os.path.basename(path.rstrip("/"))
    stem, ext = os.path.splitext(base)
    if ext not in IMAGE_SUFFIXES:
        stem = base
    m = FILE_VERSION.match(stem)
    if m:
        return m.group("name"), m.group("version")
    return stem, DEFAULT_VERSION


def module_name(meta: ImageMetadata) -> str:
    fname, fversion = name_from_file(meta.path)
    name = meta.label(NAME_LABELS) or fname
    version = meta.label(VERSION_LABELS) or fversion
    return f"{clean(name).lower()}/{clean(version)}"


def find_images(directory: str) -> List[str]:
    """Image files (by suffix) directly in ``directory``, sorted; sandbox dirs are left out."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        raise UsageError(f"image directory {directory} does not exist") from None
    except OSError as e:
        raise UsageError(f"cannot list {directory}: {e.strerror}") from None
    return [os.path.join(directory, n) for n in names
            if n.endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(directory, n))]


def known_digest(modulepath: str, name: str, tcl: bool, meta: ImageMetadata) -> Optional[str]:
    """The digest recorded by an earlier run, when the image's size and mtime are unchanged."""
    stamp = read_stamp(modulefile_path(modulepath, name, tcl))
    if stamp and stamp.get("image") == meta.path and stamp.get("stamp") == meta.stamp:
        return stamp.get("digest")
    return None


def generate_all(directory: str, modulepath: str, *, tcl: bool = False, nv: bool = False,
                 binds: Optional[List[str]] = None, hpccont: Optional[str] = None,
                 container_exec: Optional[str] = None) -> GenerateAllResult:
    result = GenerateAllResult()
    taken: Dict[str, str] = {}
    modulepath = os.path.abspath(modulepath)
    for image in find_images(os.path.abspath(directory)):
        outcome = Outcome(image)
        result.outcomes.append(outcome)
        try:
            meta = read_metadata(image)
            outcome.name = module_name(meta)
            if outcome.name in taken:
                outcome.status, outcome.detail = "skipped", f"name also used by {taken[outcome.name]}"
                continue
            taken[outcome.name] = image
            spec = make_spec(outcome.name, meta, nv=nv, binds=binds, tcl=tcl, hpccont=hpccont,
                             container_exec=container_exec,
                             digest=known_digest(modulepath, outcome.name, tcl, meta))
            plan: ModulePlan = plan_module(spec, modulepath)
            changed = apply_plan(plan)
            outcome.status = "written" if changed else "unchanged"
        except (ImageError, UsageError) as e:
            # One bad image must not stop a site's whole tree from being generated.
            outcome.status, outcome.detail = "skipped", e.one_line()
    return result
