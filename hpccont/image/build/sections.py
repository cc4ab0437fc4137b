"""Running the sections of a stage: %setup on the host, %files, %post and %test in the image.

Apptainer's conventions are kept so that existing definition files work: %setup sees the rootfs
as $APPTAINER_ROOTFS (and $SINGULARITY_ROOTFS; ours is $HPCCONT_ROOTFS), %post appends
environment lines to $APPTAINER_ENVIRONMENT (file /.singularity.d/env/91-environment.sh),
scripts run under ``/bin/sh -e`` unless the section says ``-c SHELL``.
"""
import glob
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from ...errors import BuildError
from .. import times
from . import fakeroot
from .deffile import Section
from .rootpath import resolve

ENV_FILE = "/.singularity.d/env/91-environment.sh"
SCRIPT_NAME = ".hpccont-build-script"
ROOTFS_VARS = ("HPCCONT_ROOTFS", "APPTAINER_ROOTFS", "SINGULARITY_ROOTFS")
ENVIRONMENT_VARS = ("HPCCONT_ENVIRONMENT", "APPTAINER_ENVIRONMENT", "SINGULARITY_ENVIRONMENT")
# %post may write "KEY VALUE" lines to $APPTAINER_LABELS: labels of the image (Apptainer's
# internal/pkg/build/stage.go); the file is read and removed after %post.
LABELS_FILE = "/.build.labels"
LABELS_VARS = ("HPCCONT_LABELS", "APPTAINER_LABELS", "SINGULARITY_LABELS")
TEST_LAUNCH = ('for f in /.singularity.d/env/*.sh; do [ -r "$f" ] && . "$f"; done; '
               'exec "$0" "$@"')


@dataclass
class SectionContext:
    rootfs: str
    base_dir: str                      # relative %files sources are looked up here, then in cwd
    stage_roots: Dict[str, str] = field(default_factory=dict)
    echo: Optional[Callable[[str], None]] = None
    before_output: Optional[Callable[[], None]] = None
    source_date_epoch: Optional[int] = None
    deffile: str = ""


def base_env(ctx: SectionContext) -> Dict[str, str]:
    env = {"PATH": fakeroot.DEFAULT_PATH, "HOME": "/root", "LANG": "C", "USER": "root",
           "TERM": os.environ.get("TERM", "dumb")}
    for k in ENVIRONMENT_VARS:
        env[k] = ENV_FILE
    for k in LABELS_VARS:
        env[k] = LABELS_FILE
    if ctx.source_date_epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(ctx.source_date_epoch)
    return env


def _fail(section: Section, ctx: SectionContext, status: int, tail: List[str]) -> BuildError:
    where = f"{ctx.deffile}:{section.line}: " if ctx.deffile else ""
    label = f"%{section.name}" + (f" {section.app}" if section.app else "")
    last = " | ".join(line for line in tail[-5:] if line.strip())
    return BuildError(f"{where}{label} failed with exit code {status}"
                      + (f"; last output: {last}" if last else ""), exit_code=status or 1)


def run_setup(section: Section, ctx: SectionContext) -> None:
    """%setup runs on the host (as the building user, or fake root), with the rootfs path."""
    env = dict(os.environ)
    for k in ROOTFS_VARS:
        env[k] = ctx.rootfs
    shell = section.shell_argv()
    if ctx.before_output:
        ctx.before_output()
    proc = subprocess.Popen(shell + ["-e", "-c", section.body], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            cwd=ctx.base_dir or None, process_group=0)
    tail: List[str] = []
    try:
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            tail = (tail + [line.rstrip("\n")])[-fakeroot.TAIL_LINES:]
            if ctx.echo:
                ctx.echo(line)
    except KeyboardInterrupt:
        fakeroot.kill_group(proc.pid)
        proc.wait()
        raise
    status = proc.wait()
    if status != 0:
        raise _fail(section, ctx, status if status > 0 else 128 - status, tail)


def run_in_image(section: Section, ctx: SectionContext, body: str, *, cwd: str = "/",
                 extra_env: Optional[Dict[str, str]] = None) -> None:
    """%post / %appinstall: the body as a script file inside the rootfs, chrooted."""
    script = os.path.join(ctx.rootfs, SCRIPT_NAME)
    with open(script, "w") as f:
        f.write(body + "\n")
    try:
        shell = section.shell_argv()
        env = base_env(ctx)
        env.update(extra_env or {})
        _check_shell(ctx.rootfs, shell[0], section)
        run = fakeroot.ScriptRun(ctx.rootfs, shell + ["-e", "/" + SCRIPT_NAME], env, cwd=cwd)
        if ctx.before_output:
            ctx.before_output()
        result = fakeroot.run_script(run, echo=ctx.echo)
    finally:
        os.unlink(script)
    if result.status != 0:
        raise _fail(section, ctx, result.status, result.tail)


def take_build_labels(rootfs: str) -> Dict[str, str]:
    """The labels %post wrote to $APPTAINER_LABELS ("KEY VALUE" lines, as Apptainer's
    GetLabels splits them), the file removed.  A link there is removed unread."""
    path = os.path.join(rootfs, LABELS_FILE.lstrip("/"))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return {}
    except OSError:
        if os.path.islink(path):
            os.unlink(path)
        return {}
    try:
        import stat as _stat
        text = (os.read(fd, 1 << 20).decode("utf-8", "replace")
                if _stat.S_ISREG(os.fstat(fd).st_mode) else "")
    finally:
        os.close(fd)
    os.unlink(path)
    labels: Dict[str, str] = {}
    for raw in text.split("\n"):
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            labels[key.strip()] = value.strip()
    return labels


def run_test(section: Section, ctx: SectionContext, test_path: str = "/.singularity.d/test") -> None:
    """%test: the written test script, with the image's environment, as the runtime would."""
    _check_shell(ctx.rootfs, "/bin/sh", section)
    env = base_env(ctx)
    run = fakeroot.ScriptRun(ctx.rootfs, ["/bin/sh", "-c", TEST_LAUNCH, test_path], env)
    if ctx.before_output:
        ctx.before_output()
    result = fakeroot.run_script(run, echo=ctx.echo)
    if result.status != 0:
        raise _fail(section, ctx, result.status, result.tail)


def _check_shell(rootfs: str, shell: str, section: Section) -> None:
    path = resolve(rootfs, shell)
    if not os.path.exists(path):
        raise BuildError(f"%{section.name}: the image has no {shell} to run the section "
                         "(use a base image with a shell, or '-c /path/to/shell')")


# --- %files ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Copy:
    sources: tuple        # host paths
    dest: str             # host path inside the rootfs (resolved)
    into_dir: bool        # copy into dest/ rather than onto dest


def plan_files(section: Section, ctx: SectionContext, dest_root: str, path_label: str
               ) -> List[Copy]:
    src_root = ctx.stage_roots.get(section.from_stage) if section.from_stage else None
    plan = []
    for src, dst, line in section.file_pairs(path_label):
        if src_root is not None:
            pattern = resolve(src_root, src)
        elif os.path.isabs(src):
            pattern = src
        else:
            pattern = os.path.join(ctx.base_dir, src) if ctx.base_dir else src
            if not glob.glob(pattern) and glob.glob(src):
                pattern = src
        matches = sorted(glob.glob(pattern)) or ([pattern] if os.path.lexists(pattern) else [])
        if not matches:
            where = f" in stage {section.from_stage}" if section.from_stage else ""
            raise BuildError(f"{path_label}:{line}: %{section.name}: {src}: no such file{where}")
        dest = resolve(dest_root, dst)
        into = os.path.isdir(dest) or dst.endswith("/") or len(matches) > 1
        plan.append(Copy(tuple(matches), dest, into))
    return plan


def apply_files(plan: List[Copy]) -> None:
    for c in plan:
        parent = c.dest if c.into_dir else os.path.dirname(c.dest)
        os.makedirs(parent, exist_ok=True)
        # -L: copy what links point to, as Apptainer does (a link to the host is useless inside)
        r = subprocess.run(["cp", "-fLr", "--", *c.sources, c.dest if not c.into_dir else parent],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise BuildError(f"%files: copying {', '.join(c.sources)}: {r.stderr.strip()}")
        for src in c.sources:
            dst = os.path.join(c.dest, os.path.basename(src.rstrip("/"))) if c.into_dir \
                else c.dest
            times.follow_copy(src, dst)   # pycs copied with their sources stay valid


def echo_stdout(line: str) -> None:
    sys.stdout.write(line)
    sys.stdout.flush()
