"""Step templates: a step's container built again without an interpreter (launcher/step.c).

Each node of each step runs ``hpccont slurm prepare``: an interpreter that starts, imports,
plans and builds the container in Python, ~60-80 ms on the step's critical path before any
task runs.  Yet consecutive steps of a user's work plan the same container: the same image,
options, directory and environment, differing only in the step's identity (SLURM_JOB_ID, the
ports of its srun, ...), which reaches the tasks through their own environment and not
through the container.  So a prepare that planned a step records a *template*: what its
keeper built (runtime/cold.py's build fields, captured inside the keeper) and the recipe it
printed for the tasks, keyed by everything the plan was made from except VARYING below.
The plugin runs hpccont-step, which computes the same key; with a template it builds the
container in C (cold.c's applier), keeps it as Python's keeper would and prints the same
recipe.  Without one it execs the Python launcher, which plans as always.

The rule that makes a template safe: the plan may depend on the step only by its name
"JOB.STEP" (the PMIx directories Slurm makes per step), which the template holds as
PLACEHOLDER.  That is not assumed but checked each time a template is written: the step is
planned a second time under another name and with other values of every VARYING variable,
and the two results must agree once each name is replaced by PLACEHOLDER.  An image env
script exporting ``$SLURM_JOB_ID``, say, fails the check and the step stays on the Python
path.  What the key cannot vouch for is checked by step.c before anything is changed: the
stamps of the files planning read (the image, slurm.conf; 'z' fields), every bind source
and the FUSE server (cold.c's usable).
"""
from __future__ import annotations

import os
import sys

STEP_MAGIC = b"hpccont-step-1"
PLACEHOLDER = "\x01"
# Job variables that differ from step to step whatever the user does (step.c has the list):
# out of the key, and checked to change nothing of a template.
# (SLURM_JOB_NAME: srun names a job it creates after its command; the last two: a PMIx step's,
# its server's directory and its abort agent's port, see task.PMIX_STEP_VARS.)
VARYING = ("SLURM_JOB_ID", "SLURM_JOBID", "SLURM_STEP_ID", "SLURM_STEPID",
           "SLURM_SRUN_COMM_PORT", "SLURM_STEP_LAUNCHER_PORT", "SLURM_TASK_PID",
           "SLURM_JOB_START_TIME", "SLURM_JOB_END_TIME", "SLURM_PTY_PORT",
           "SLURM_STEP_RESV_PORTS", "SLURM_JOB_NAME", "PMIX_SERVER_TMPDIR",
           "SLURM_PMIXP_ABORT_AGENT_PORT")
JOB_VARS = ("SLURM_JOB_ID", "SLURM_JOBID")
STEP_VARS = ("SLURM_STEP_ID", "SLURM_STEPID")
# The task recipe's tags step.c prints from a template (then the keeper's 'p' and 't').
TASK_TAGS = "mhwaKkuUsc"
BUILDER = "hpccont-step"


def builder_installed() -> bool:
    """Is step.c's program beside this launcher (the plugin runs it only from there)?"""
    return os.path.exists(os.path.join(os.path.dirname(sys.argv[0]), BUILDER))


def material(argv: list, cwd: str, environ_block: bytes) -> bytes:
    """The key, as step.c builds it (NUL-terminated strings): the words after ``slurm
    prepare`` up to ``--`` with the step's name left out, the working directory, the ids, the
    stamps of the site config, /etc/passwd, /etc/group and the launcher, and the environment
    as exec'd without VARYING."""
    from ...runtime.share import common_material
    words = [os.fsencode(a) for a in argv[3:]]
    if b"--" in words:
        words = words[:words.index(b"--")]
    words = [b"-" if i and words[i - 1] == b"--step" else w for i, w in enumerate(words)]
    env = [e for e in (environ_block.split(b"\0")[:-1] if environ_block else [])
           if e.split(b"=", 1)[0].decode("utf-8", "surrogateescape") not in VARYING]
    parts = [STEP_MAGIC, b"n=%d" % len(words), *words,
             *common_material(os.fsencode(cwd), os.fsencode(argv[0])),
             b"env=%d" % len(env), *env]
    return b"\0".join(parts) + b"\0"


def own_environ() -> bytes:
    """This process's environment as exec'd (what step.c sees as environ)."""
    try:
        with open("/proc/self/environ", "rb") as f:
            return f.read()
    except OSError:
        return b""


def unrecordable(step, plan, cfg: dict, req, image_option: str, environ, cwd: str) -> str | None:
    """Why this step's container cannot be recorded as a template, or None."""
    from ...runtime.cold import unrecordable as cold_unrecordable
    from ..common import is_registry_ref
    from .task import found_first
    if step.kind != "step":
        return f"a {step.kind} step (planned every time)"
    if not builder_installed():
        return f"no {BUILDER} beside the launcher"
    why = cold_unrecordable(plan, cfg, req, keeper=True)
    if why:
        return why
    if is_registry_ref(image_option):
        return "an image from a registry"
    if not found_first(image_option, plan.image.path, environ, cwd):
        return "an image found past the first directory searched"
    return None


def named(text: str, name: str) -> str:
    """``text`` with each whole occurrence of the step's name replaced by PLACEHOLDER."""
    import re         # not at the top: the accounting program reads VARYING from here
    return re.sub(r"(?<![0-9])" + re.escape(name) + r"(?![0-9])", PLACEHOLDER, text)


def signature(plan, task_fields: list, name: str) -> str:
    """What a template is made of, for the second planning to compare: the plan's mounts,
    image, identity and program, and the tasks' recipe, with the step's name as PLACEHOLDER."""
    mounts = [(m.kind, m.target, m.source, m.readonly, m.optional, m.content, m.options)
              for m in plan.mounts]
    data = (plan.mode, plan.image.path, plan.image.offset, plan.identity, plan.cwd,
            plan.writable_tmpfs, plan.argv[:1], plan.env.get("PATH", ""), mounts, task_fields)
    return named(repr(data), name)


def synthetic(step, environ: dict):
    """Another step, its job variables (every VARYING value changed: the step's name, where a
    value holds it, becomes the other's) and its step_binds ``is_dir``: a directory of the
    other step's exists when the real step's does (Slurm made this step's, not the other's)."""
    from .plugin import StepId
    other = StepId(str(int(step.job) + 1000003), str(int(step.step) + 7))
    env = dict(environ)
    for var in VARYING:
        if var in env:
            v = env[var]
            renamed = named(v, step.key).replace(PLACEHOLDER, other.key)
            env[var] = (other.job if var in JOB_VARS else other.step if var in STEP_VARS
                        else renamed if renamed != v
                        else str(int(v) + 1) if v.isdigit() else v + "x")

    def is_dir(path: str) -> bool:
        return os.path.isdir(named(path, other.key).replace(PLACEHOLDER, step.key))
    return other, env, is_dir


def stamps(plan, environ) -> list:
    """'z' fields: the files planning read that the key does not stamp."""
    from ...runtime.share import stamp
    paths = [plan.image.path]
    from .task import PMIX_STEP_VARS
    if any(v in environ for v in PMIX_STEP_VARS):
        from . import conf as slurm_conf
        conf = slurm_conf.find(environ)
        if conf is not None:
            paths.append(conf.path)
    return [("z", stamp(os.fsencode(p)).decode() + " " + p) for p in paths]


def build_file(d: str) -> str:
    return os.path.join(d, f".step-build-{os.getpid()}")


class Capture:
    """join.ensure_keeper's ``capture``: in the keeper, the build fields into ``path``."""

    def __init__(self, path: str, cmd: list):
        self.path = path
        self.cmd = [os.fsencode(a) for a in cmd]

    def __call__(self, plan, cfg: dict, root: str) -> None:
        """Runs inside the step's keeper: a template only spares later steps time, so nothing
        that goes wrong in writing it down may fail this step's container."""
        from ...runtime.cold import build_of
        from ...runtime.recipe import encode
        try:
            fields = build_of(plan, cfg, root, self.cmd)
            if fields is None:
                return
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(encode(fields))
        except Exception:    # noqa: BLE001 (see above): no template, the step goes on
            pass

    def take(self) -> bytes | None:
        """The build the keeper wrote (the file removed), or None."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
            os.unlink(self.path)
            return data
        except OSError:
            return None


def write(dir_fd: int, key: bytes, build: bytes, checks: list, task_fields: list,
          name: str) -> bool:
    """The template, with the step's name as PLACEHOLDER in every field; False (nothing
    written) when a field already holds a PLACEHOLDER byte."""
    from ...runtime.recipe import encode
    from ...runtime.share import write_recipe
    raw = build.split(b"\0")[:-1]
    built = [(f[:1].decode(), f[1:].decode("utf-8", "surrogateescape")) for f in raw]
    fields = checks + built + list(task_fields)
    if any(PLACEHOLDER in payload for _, payload in fields):
        return False
    fields = [(tag, named(payload, name)) for tag, payload in fields]
    encode(fields)
    write_recipe(dir_fd, "step", key, fields)
    return True
