"""``hpccont build``: from a definition file (or an image, or an archive) to a SIF or a sandbox.

Order of work, as in Apptainer, for each stage: bootstrap, %setup (host), %files, %appfiles,
%post, %appinstall, metadata (/.singularity.d, /scif), %test (last stage only), then pack.
Non-root builds run the whole pipeline as root of a user namespace (fakeroot.py), so that the
image's files keep root and system owners and nothing needs privileges on the host.

Builds are reproducible by default: what the build writes gets SOURCE_DATE_EPOCH's time (0
when unset), as do, when it is given, files newer than it; files keep the times they came with
otherwise, and pycs are kept valid (image/times.py).  The squashfs creation time and SIF times
are SOURCE_DATE_EPOCH's, mksquashfs sorts entries, and labels carry no build-host noise; the
same inputs give the same bytes.
"""
import contextlib
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ...errors import BuildError
from .. import times
from ..leftovers import work_prefix
from . import agents, deffile, fakeroot, output, scif, sections
from .deffile import Definition, Section, Stage
from .progress import Progress
from .srcref import BuildSource, classify

# Sections whose content becomes metadata rather than being run.
METADATA_SECTIONS = ("environment", "runscript", "startscript", "labels", "help")
SKELETON_DIRS = ("proc", "sys", "dev", "tmp", "var/tmp", "etc", "root", "home")
OCI_ENV_FILE = ".singularity.d/env/10-docker2singularity.sh"


@dataclass
class BuildOptions:
    out: str
    source: str
    sandbox: bool = False
    force: bool = False
    notest: bool = False
    sections: Tuple[str, ...] = ()          # empty: all
    update: bool = False
    mksquashfs_args: List[str] = field(default_factory=list)
    tmpdir: str = "/tmp"
    fakeroot: bool = False
    build_args: Dict[str, str] = field(default_factory=dict)
    reproducible: bool = True
    source_date_epoch: int = 0
    source_date_epoch_given: bool = False   # clamp every file newer than it, not only the build's
    quiet: bool = False
    nohttps: bool = False                   # Bootstrap: docker/oras over plain HTTP
    arch: str = ""                          # Bootstrap: docker platform ("" = the host's)

    def wants(self, section: str) -> bool:
        return not self.sections or section in self.sections


@dataclass
class StagePlan:
    """Where each stage is built, decided before anything runs."""
    stage: Stage
    rootfs: str
    final: bool
    bootstrap: bool


def build(opts: BuildOptions) -> None:
    out = Path(os.path.abspath(opts.out))
    progress = Progress(quiet=opts.quiet)
    output.check_out(out, force=opts.force, update=opts.update, sandbox=opts.sandbox or opts.update)
    _check_tmpdir(opts.tmpdir)
    source = classify(opts.source)
    if source.kind == "image":
        if opts.update:
            raise BuildError("--update needs a definition file as SRC")
        return convert(opts, out, source, progress)
    definition = load_definition(source, opts)
    if definition.final.headerless and not opts.update:
        # Apptainer refuses to build a header-less file too: there is nothing to start from.
        raise BuildError(f"{definition.path}: no 'Bootstrap:' header: a definition of sections "
                         "only is applied to an existing sandbox (hpccont build --update "
                         "SANDBOX DEF), or needs e.g. 'Bootstrap: localimage' and 'From: IMAGE'")
    run_definition(opts, definition, out, progress)


def run_definition(opts: BuildOptions, definition: Definition, out: Path,
                   progress: Progress) -> None:
    """Build ``definition`` into ``out`` (checked by the caller).  Registry images the stages
    start from are fetched first, outside any user namespace (agents.prefetch)."""
    for name in definition.unused_build_args:
        progress.note(f"warning: build argument {name} is not used by the definition file")
    agents.prefetch(definition, opts)
    job = BuildJob(opts, definition, out, progress)
    if os.geteuid() != 0:
        if not opts.fakeroot:
            raise BuildError("building from a definition file as a non-root user needs --fakeroot")
        progress.note(fakeroot.host_plan().describe())
        fakeroot.run_as_fakeroot(job.run)
    else:
        job.run()
    progress.note(f"built {out}")


def _check_tmpdir(tmpdir: str) -> None:
    if not os.path.isdir(tmpdir):
        raise BuildError(f"--tmpdir {tmpdir}: not a directory")
    if not os.access(tmpdir, os.W_OK | os.X_OK):
        raise BuildError(f"--tmpdir {tmpdir}: not writable")
    from ..leftovers import sweep
    sweep(tmpdir)               # work directories of killed builds (leftovers.py)


def load_definition(source: BuildSource, opts: BuildOptions) -> Definition:
    if source.kind == "agent" and source.agent in agents.REMOTE_AGENTS:
        return deffile.from_reference(source.agent, source.path)
    if source.kind == "agent":
        return deffile.from_reference(source.agent, os.path.abspath(source.path))
    return deffile.load(source.path, opts.build_args)


def convert(opts: BuildOptions, out: Path, source: BuildSource, progress: Progress) -> None:
    """SRC is already an image: repack it (sandbox <-> SIF <-> squashfs)."""
    partial = output.partial_path(out)
    try:
        with progress.phase(f"convert {source.path}"):
            pack(opts, os.path.abspath(source.path), partial, sandbox=opts.sandbox)
        output.commit(partial, out)
    except BaseException:
        output.remove(partial)
        raise
    progress.note(f"built {out}")


def reproducible_mksquashfs_args(opts: BuildOptions) -> List[str]:
    """mksquashfs sorts entries by default (-reproducible); file times are clamped before it
    runs (times.py) and its creation time comes from the clamp (-mkfs-time)."""
    return list(opts.mksquashfs_args)


def clamp_for(opts: BuildOptions, since_ns: Optional[int] = None) -> Optional[times.Clamp]:
    """How a reproducible build fixes times: what it wrote since ``since_ns`` (None: since the
    conversion started) gets SOURCE_DATE_EPOCH, and so does, when that was given, anything
    newer.  None for --no-reproducible: times stay as they are."""
    if not opts.reproducible:
        return None
    return times.Clamp(opts.source_date_epoch, since_ns, newer=opts.source_date_epoch_given)


@contextlib.contextmanager
def _epoch(opts: BuildOptions):
    """SOURCE_DATE_EPOCH set while packing: the SIF writer takes its header and descriptor
    times from it, and mksquashfs its creation time."""
    before = os.environ.get("SOURCE_DATE_EPOCH")
    if opts.reproducible:
        os.environ["SOURCE_DATE_EPOCH"] = str(opts.source_date_epoch)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SOURCE_DATE_EPOCH", None)
        else:
            os.environ["SOURCE_DATE_EPOCH"] = before


def pack(opts: BuildOptions, src: str, dest: Path, *, sandbox: bool,
         deffile_text: Optional[str] = None, labels: Optional[Dict[str, str]] = None,
         since_ns: Optional[int] = None) -> None:
    from ..convert import image_from_source
    with _epoch(opts):
        image_from_source(str(dest), src, sandbox=sandbox, force=True,
                          mksquashfs_args=reproducible_mksquashfs_args(opts),
                          deffile_text=deffile_text, labels=labels,
                          clamp=clamp_for(opts, since_ns))
    if opts.reproducible and not sandbox:
        set_content_uuid(str(dest))


def set_content_uuid(path: str) -> None:
    """Replace the SIF's random image UUID by one derived from its content (the file with the
    UUID field zeroed), so that identical inputs give identical bytes."""
    import hashlib
    from .. import sif
    image = sif.read_sif(path)
    header = image.header
    header.id = bytes(16)
    digest = hashlib.sha256()
    with open(path, "r+b") as f:
        f.write(header.pack())
        f.seek(0)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
        raw = bytearray(digest.digest()[:16])
        raw[6] = (raw[6] & 0x0F) | 0x50       # name-based (version 5) UUID
        raw[8] = (raw[8] & 0x3F) | 0x80
        header.id = bytes(raw)
        f.seek(0)
        f.write(header.pack())


class BuildJob:
    def __init__(self, opts: BuildOptions, definition: Definition, out: Path, progress: Progress):
        self.opts, self.definition, self.out, self.progress = opts, definition, out, progress
        self.base_dir = os.path.dirname(os.path.abspath(definition.path)) \
            if os.path.exists(definition.path) else os.getcwd()
        self.verbose = not opts.quiet
        self.partial = output.partial_path(out)

    # the agent context (agents read base_dir, progress, verbose)
    def plans(self, work: str) -> List[StagePlan]:
        plans = []
        for stage in self.definition.stages:
            final = stage is self.definition.final
            if final and self.opts.update:
                rootfs, boot = str(self.out), False
            elif final and self.opts.sandbox:
                rootfs, boot = str(self.partial), True
            else:
                rootfs, boot = os.path.join(work, f"rootfs-{stage.index}"), True
            plans.append(StagePlan(stage, rootfs, final, boot))
        return plans

    def run(self) -> None:
        # SIGTERM (scancel, timeout) must clean up like ^C does.
        signal.signal(signal.SIGTERM, _raise_interrupt)
        work = tempfile.mkdtemp(prefix=work_prefix(hidden=False), dir=self.opts.tmpdir)
        os.environ["HPCCONT_BUILD_WORK"] = work
        try:
            # Anything modified from now on was written by the build (times.py).  Read from
            # both filesystems the build writes on, in case their clocks differ.
            since = min(times.fs_clock(work), times.fs_clock(str(self.partial.parent)))
            roots: Dict[str, str] = {}
            plans = self.plans(work)
            for plan in plans:
                self.build_stage(plan, roots)
                roots[plan.stage.name] = plan.rootfs
            final = plans[-1]
            if self.opts.update:
                return
            clamp = clamp_for(self.opts, since)
            if clamp is not None:
                with self.progress.phase("clamp times"):
                    times.normalise(final.rootfs, clamp)
            if not self.opts.sandbox:
                with self.progress.phase("squash and write SIF"):
                    pack(self.opts, final.rootfs, self.partial, sandbox=False,
                         deffile_text=self.definition.text, labels=None, since_ns=since)
            output.commit(self.partial, self.out)
        except BaseException:
            output.remove(self.partial)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def build_stage(self, plan: StagePlan, roots: Dict[str, str]) -> None:
        stage, rootfs = plan.stage, plan.rootfs
        label = f"stage {stage.name}: " if len(self.definition.stages) > 1 else ""
        config = None
        if plan.bootstrap:
            os.makedirs(rootfs, exist_ok=True)
            os.chmod(rootfs, 0o755)
            with self.progress.phase(f"{label}bootstrap ({stage.bootstrap})"):
                config = agents.bootstrap(stage, rootfs, self)
            _skeleton(rootfs)
            from ..layout import write_layout
            write_layout(rootfs)
            if config is not None:
                _write_oci_config(rootfs, config)
        ctx = sections.SectionContext(
            rootfs=rootfs, base_dir=self.base_dir, stage_roots=dict(roots),
            echo=None if self.opts.quiet else sections.echo_stdout,
            before_output=self.progress.before_output,
            source_date_epoch=self.opts.source_date_epoch if self.opts.reproducible else None,
            deffile=self.definition.path)
        self.run_sections(plan, ctx, label)
        self.write_metadata(plan, config)
        test = stage.get("test")
        if plan.final and test is not None and not self.opts.notest and self.opts.wants("test"):
            with self.progress.phase(f"{label}%test"):
                sections.run_test(test, ctx)

    def run_sections(self, plan: StagePlan, ctx: sections.SectionContext, label: str) -> None:
        stage, opts = plan.stage, self.opts
        setup = stage.get("setup")
        if setup is not None and opts.wants("setup"):
            with self.progress.phase(f"{label}%setup"):
                sections.run_setup(setup, ctx)
        if opts.wants("files"):
            for files in stage.all("files"):
                with self.progress.phase(f"{label}%files" + (f" from {files.from_stage}"
                                                             if files.from_stage else "")):
                    sections.apply_files(sections.plan_files(files, ctx, ctx.rootfs,
                                                             self.definition.path))
            for app, secs in sorted(stage.apps.items()):
                for files in [s for s in stage.sections if s.name == "appfiles" and s.app == app]:
                    dest = scif.app_dir(ctx.rootfs, app)
                    os.makedirs(dest, exist_ok=True)
                    with self.progress.phase(f"{label}%appfiles {app}"):
                        sections.apply_files(sections.plan_files(files, ctx, dest,
                                                                 self.definition.path))
        post = stage.get("post")
        if post is not None and opts.wants("post"):
            with self.progress.phase(f"{label}%post"):
                sections.run_in_image(post, ctx, post.body)
            stage.post_labels = sections.take_build_labels(ctx.rootfs)
        if stage.apps and opts.wants("post"):
            for app in scif.app_order(stage):
                install = stage.apps[app].get("appinstall")
                scif.prepare_app(ctx.rootfs, app)
                if install is not None:
                    with self.progress.phase(f"{label}%appinstall {app}"):
                        sections.run_in_image(install, ctx, install.body, cwd=scif.app_path(app),
                                              extra_env=scif.app_env(app))

    def write_metadata(self, plan: StagePlan, config) -> None:
        from ..layout import write_layout
        stage = plan.stage
        values = metadata_values(stage, self.opts, config)
        if any(v is not None for k, v in values.items() if k != "labels") or values["labels"]:
            write_layout(plan.rootfs, **values)
        if stage.apps:
            scif.write_apps(plan.rootfs, stage)


def metadata_values(stage: Stage, opts: BuildOptions, config) -> dict:
    """write_layout arguments for the stage's metadata sections (None: keep what is there)."""
    def script(name: str) -> Optional[str]:
        sec = stage.get(name)
        if sec is None or not opts.wants(name):
            return None
        return f"#!{sec.interpreter or '/bin/sh'}\n\n{sec.body}\n"
    env = stage.get("environment")
    helpsec = stage.get("help")
    values = {
        "runscript": script("runscript"),
        "startscript": script("startscript"),
        "test": script("test"),
        "helpfile": helpsec.body.strip("\n") + "\n" if helpsec is not None and opts.wants("help")
        else None,
        "environment": ("#!/bin/sh\n# Custom environment shell code should follow\n\n"
                        + env.body + "\n") if env is not None and opts.wants("environment")
        else None,
        "labels": {},
    }
    if config is not None and values["runscript"] is None:
        values["runscript"] = config.runscript()
    if opts.wants("labels"):
        labels = dict(config.labels) if config is not None else {}
        labels.update(build_labels(stage, opts))
        labels.update(getattr(stage, "post_labels", {}))     # $APPTAINER_LABELS in %post
        labels.update(parse_labels(stage.get("labels")))
        values["labels"] = labels
    return values


def parse_labels(section: Optional[Section]) -> Dict[str, str]:
    labels: Dict[str, str] = {}
    if section is None:
        return labels
    for raw in section.body.split("\n"):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        labels[key] = value.strip()
    return labels


def build_labels(stage: Stage, opts: BuildOptions) -> Dict[str, str]:
    """The org.label-schema labels Apptainer adds (the SIF writer's, so both paths agree); the
    date is SOURCE_DATE_EPOCH's when reproducible, so it carries no build-host noise."""
    from ..convert import build_labels as base_labels
    from ..sif import host_arch
    with _epoch(opts):
        labels = base_labels(host_arch())
    if stage.bootstrap:
        labels["org.label-schema.usage.singularity.deffile.bootstrap"] = stage.bootstrap
    if stage.header.get("from"):
        labels["org.label-schema.usage.singularity.deffile.from"] = stage.header["from"]
    return labels


def _skeleton(rootfs: str) -> None:
    for d in SKELETON_DIRS:
        path = os.path.join(rootfs, d)
        if not os.path.lexists(path):
            os.makedirs(path)
            if d in ("tmp", "var/tmp"):
                os.chmod(path, 0o1777)


def _write_oci_config(rootfs: str, config) -> None:
    path = os.path.join(rootfs, OCI_ENV_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(config.environment())
    os.chmod(path, 0o755)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
