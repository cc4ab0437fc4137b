"""Images from images: a SIF (or a --sandbox directory) from a sandbox, a SIF or a squashfs file.

Plan, then build into a temporary path next to the output, then rename: an interrupted or
failed build never leaves a half-written image under the output name, and temporary trees are
removed however the build ends.  A sandbox source is packed as it is (never modified): the
pieces of the ``/.singularity.d`` layout it lacks are added as mksquashfs pseudo files.
"""
import dataclasses
import os
import shutil
import subprocess
import tempfile
import time
from typing import Dict, List, Optional, Sequence

from .. import __version__
from ..errors import BuildError
from .source import ImageSource
from . import layout, sif, squashfs, times
from .leftovers import die_with_parent, work_prefix
from .source import open_image

INSPECT_METADATA_NAME = "inspect-metadata.json"


def build_labels(arch: str) -> Dict[str, str]:
    """The org.label-schema labels Apptainer's build adds (date in Apptainer's format)."""
    t = sif.build_time()
    date = time.strftime("%A_%d_%B_%Y_%H:%M:%S_UTC", time.gmtime(t))
    return {"org.label-schema.schema-version": "1.0",
            "org.label-schema.build-arch": arch,
            "org.label-schema.build-date": date,
            "org.label-schema.usage.hpccont.version": __version__}


def image_from_source(out: str, src: str, *, sandbox: bool = False, force: bool = False,
                      mksquashfs_args: Optional[Sequence[str]] = None,
                      deffile_text: Optional[str] = None,
                      labels: Optional[Dict[str, str]] = None,
                      comp: Optional[str] = None,
                      clamp: Optional[times.Clamp] = None) -> str:
    """Build ``out`` (a SIF, or a sandbox directory when ``sandbox``) from image ``src``.

    Returns the absolute output path.  ``deffile_text`` defaults to what Apptainer records for
    such a build ("bootstrap: localimage / from: SRC"); ``labels`` are merged over the image's.
    ``clamp`` (reproducible builds) fixes the times of what this conversion writes, and of
    what is newer than SOURCE_DATE_EPOCH when that is given, keeping pycs valid (times.py);
    without it the tree's times are packed as they are.
    """
    source = open_image(src)
    out = os.path.abspath(out)
    _check_output(out, source, force)
    arch = sif.host_arch()
    all_labels = build_labels(arch)
    all_labels.update(labels or {})
    deffile = deffile_text if deffile_text is not None else \
        f"bootstrap: localimage\nfrom: {source.path}\n"
    parent = os.path.dirname(out)
    work = tempfile.mkdtemp(prefix=work_prefix(hidden=True), dir=parent)
    try:
        if clamp is not None and clamp.since_ns is None:
            clamp = dataclasses.replace(clamp, since_ns=times.fs_clock(work))
        if sandbox:
            root = os.path.join(work, "rootfs")
            _unpack(source, root)
            layout.write_layout(root, deffile=deffile, labels=all_labels)
            if clamp is not None:
                times.normalise(root, clamp)
            _replace_output(root, out, force)
        else:
            tmp_sif = os.path.join(work, "image.sif")
            _write_sif(tmp_sif, source, work, deffile, all_labels, arch,
                       list(mksquashfs_args or ()), comp, clamp)
            _replace_output(tmp_sif, out, force)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _check_output(out: str, source: ImageSource, force: bool) -> None:
    if os.path.realpath(out) == os.path.realpath(source.path):
        raise BuildError(f"{out}: output and source are the same image")
    if source.kind == "sandbox" and os.path.realpath(out).startswith(
            os.path.realpath(source.path) + os.sep):
        raise BuildError(f"{out}: output would be inside the source sandbox")
    if os.path.lexists(out) and not force:
        raise BuildError(f"{out} already exists (use --force to overwrite)")
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise BuildError(f"{out}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BuildError(f"{out}: cannot write in {parent}: permission denied")


def _replace_output(built: str, out: str, force: bool) -> None:
    if os.path.lexists(out):
        if not force:
            raise BuildError(f"{out} already exists (use --force to overwrite)")
        if os.path.isdir(out) and not os.path.islink(out):
            shutil.rmtree(out)
        else:
            os.unlink(out)
    os.rename(built, out)


def _unpack(source: ImageSource, root: str) -> None:
    """Copy the source's tree to the new directory ``root`` (which must not exist)."""
    if source.kind == "sandbox":
        os.mkdir(root)
        r = subprocess.run(["cp", "-a", "--reflink=auto", source.path + "/.", root],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=die_with_parent)
        if r.returncode != 0:
            raise BuildError(f"copying {source.path} failed: {_last_line(r.stderr)}")
        return
    if source.fs_type != "squashfs":
        raise BuildError(f"{source.path}: cannot unpack a {source.fs_type} partition")
    squashfs.extract(source.path, root, offset=source.offset)


def _write_sif(tmp_sif: str, source: ImageSource, work: str, deffile: str,
               labels: Dict[str, str], arch: str, mksquashfs_args: List[str],
               comp: Optional[str], clamp: Optional[times.Clamp]) -> None:
    root = source.path
    if source.kind != "sandbox" or (clamp is not None and not times.plan(root, clamp).empty()):
        # A source sandbox is packed as it is unless its times must change (files newer than
        # SOURCE_DATE_EPOCH, or written while converting): then a copy is changed instead.
        root = os.path.join(work, "rootfs")
        _unpack(source, root)
        if clamp is not None:
            times.normalise(root, clamp)
    entries = layout.plan_layout(lambda rel: os.path.lexists(os.path.join(root, rel)),
                                 layout.dir_reader(root), deffile=deffile, labels=labels)
    stage = os.path.join(work, "stage")
    os.mkdir(stage)
    mtime = clamp.epoch if clamp is not None else None
    pseudo, excludes = layout.pseudo_definitions(entries, stage, mtime=mtime)
    extra: List[str] = []
    for p in pseudo:
        extra += ["-p", p]
    extra += mksquashfs_args
    if excludes:
        # -e takes every argument after it, so it goes last
        extra += ["-e", *excludes]
    fs = os.path.join(work, "rootfs.sqsh")
    squashfs.mksquashfs(root, fs, comp=comp, extra_args=extra, mkfs_time=mtime)
    metadata = _metadata_after(root, entries, deffile)
    sif.create_sif(tmp_sif, [
        sif.ObjectInput(sif.DATA_DEFFILE, data=deffile.encode()),
        sif.ObjectInput(sif.DATA_GENERIC_JSON, data=metadata.sif_document(),
                        name=INSPECT_METADATA_NAME),
        sif.ObjectInput(sif.DATA_PARTITION, path=fs,
                        extra=sif.partition_extra(sif.FS_SQUASH, sif.PART_PRIMSYS, arch)),
    ])


def _metadata_after(root: str, entries: List[layout.Entry], deffile: str) -> layout.Metadata:
    """The image's metadata as it will be once ``entries`` are added to ``root``."""
    planned = {e.path: e.content.encode() for e in entries if e.kind == "file"}
    on_disk = layout.dir_reader(root)

    def read(rel: str) -> Optional[bytes]:
        return planned[rel] if rel in planned else on_disk(rel)
    env = set(layout.list_env_dir(root)) | {p for p in planned if p.startswith(f"{layout.META_DIR}/env/")}
    return layout.read_metadata(read, sorted(env), deffile=deffile, apps=layout.list_apps(root))


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "no message"
