"""Slurm policy: what the SPANK plugin's tasks run, and the per-step accounting record.

The C plugin (spank_plugin/) only collects options and execs ``hpccont slurm task`` in each task
(as the user, in the step's cgroup, keeping the task's PID) and ``hpccont slurm record`` once per
node per step in slurmstepd (as root).  Every decision is made here:

- which steps are wrapped (``STEP_KINDS``): a normal srun step always, the batch script only with
  the plugstack switch ``wrap_batch``, the extern step never;
- options: ``--hpccont-image`` (what ``--container`` becomes through the cli_filter) and the
  ``--container-*`` options beat the ``HPCCONT_CONTAINER*`` variables of the job environment, so a
  step inside a batch job inherits the job's container unless it names another or ``none``;
- no task is wrapped twice: a task that is itself a container launcher is left alone;
- errors: one line per node (the node's first task), the same exit status from every task.

This module is on the path of every task: it imports only the stdlib it needs.
"""
from __future__ import annotations

import os
import sys
TYPE_CHECKING = False   # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Dict, List, Mapping, Optional, Tuple

from ..errors import HpccontError, ImageError, SchedulerError, UsageError
from ..record import factory, record
from .common import (OPTION_TABLE, JobOptions, env_name, options_from_env, parse_options,
                     resolve_image)

# Plugstack arguments (``key=value`` after the plugin path) and their defaults.
PLUGSTACK_DEFAULTS: Dict[str, str] = {
    "hpccont": "/usr/bin/hpccont",            # the executable the plugin execs
    "image_dir": "",                          # ':'-separated dirs for bare names (--container=pytorch)
    "wrap_batch": "yes",                      # run the batch script itself in the container
    "require_signature": "no",                # refuse images whose signature does not verify
    "accounting": "/var/log/hpccont/slurm-steps.jsonl",   # per-node log of image + digest per step
    "admin_comment": "yes",                   # also put the image + digest in the job's AdminComment
    "slurm_conf": "",                         # slurm.conf for scontrol when not the default one
    "prepare_timeout": "300",                 # seconds the plugin waits for prepare (read in C)
}

IMAGE_OPTION = "hpccont-image"                # the plugin's name for --container (cli_filter maps it)

# Slurm's special step ids (slurm.h) -> the name used in keys, logs and ``sacct``.
SPECIAL_STEPS = {
    0xFFFFFFFA: "interactive",
    0xFFFFFFFB: "batch",
    0xFFFFFFFC: "extern",
    0xFFFFFFFD: "pending",
}

# step kind -> does a container request apply to it?  (``wrap_batch`` handled by ``_wraps``.)
STEP_KINDS = {
    "step": True,
    "interactive": True,
    "batch": "wrap_batch",
    "extern": False,
    "pending": False,
}

# Commands that start a container themselves: wrapping them again would nest two containers.
SELF_LAUNCHERS = ("hpccont", "container-exec", "run-singularity", "apptainer", "singularity")

# Variable set in every wrapped task: which step's container it runs in.
STEP_VAR = "HPCCONT_SLURM_STEP"
# Where the client typed the options (set by the plugin on srun/sbatch/salloc).
CWD_VAR = "HPCCONT_SLURM_CWD"


_YES = ("1", "yes", "true", "on")
_NO = ("0", "no", "false", "off")


@record
class PluginArgs:
    hpccont: str
    image_dirs: List[str]
    wrap_batch: bool
    require_signature: bool
    accounting: str
    admin_comment: bool
    slurm_conf: str = ""
    prepare_timeout: int = 300


@record
class Step:
    job: str
    step: str

    @property
    def key(self) -> str:
        return f"{self.job}.{self.step}"

    @property
    def kind(self) -> str:
        return self.step if self.step in STEP_KINDS else "step"


@record
class TaskPlan:
    """What one task execs: ``request`` in the container, or ``argv`` as Slurm would run it
    (``image`` None, with the ``reason``)."""
    argv: List[str]
    image: Optional[str] = None
    reason: str = ""
    env: Dict[str, str] = factory(dict)
    request: Optional["ContainerRequest"] = None   # noqa: F821 (runtime.request, lazily)


# -- parsing what the plugin hands over ---------------------------------------------------------
def _switch(key: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _YES:
        return True
    if v in _NO:
        return False
    raise SchedulerError(f"plugstack.conf: {key}={value!r} must be yes or no")


def parse_plugin_args(args: List[str]) -> PluginArgs:
    values = dict(PLUGSTACK_DEFAULTS)
    for a in args:
        key, sep, value = a.partition("=")
        if not sep or key not in PLUGSTACK_DEFAULTS:
            raise SchedulerError(f"plugstack.conf: unknown argument {a!r} "
                                 f"(known: {', '.join(k + '=' for k in PLUGSTACK_DEFAULTS)})")
        values[key] = value
    return PluginArgs(
        hpccont=values["hpccont"],
        image_dirs=[d for d in values["image_dir"].split(":") if d],
        wrap_batch=_switch("wrap_batch", values["wrap_batch"]),
        require_signature=_switch("require_signature", values["require_signature"]),
        accounting=values["accounting"],
        admin_comment=_switch("admin_comment", values["admin_comment"]),
        slurm_conf=values["slurm_conf"],
        prepare_timeout=_seconds("prepare_timeout", values["prepare_timeout"]),
    )


def _seconds(key: str, value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise SchedulerError(f"plugstack.conf: {key}={value!r} must be a number of seconds")
    return int(value)


@record
class JobIdentity:
    """The job's user as Slurm says it (S_JOB_UID/GID/SUPPLEMENTARY_GIDS), for root-side code."""
    uid: int
    gid: int
    groups: List[int] = factory(list)


def parse_identity(text: str) -> JobIdentity:
    """``"1001:1001:1001,27"`` (as the plugin prints it)."""
    parts = text.split(":")
    try:
        return JobIdentity(int(parts[0]), int(parts[1]),
                           [int(g) for g in parts[2].split(",") if g] if len(parts) > 2 else [])
    except (ValueError, IndexError):
        raise SchedulerError(f"bad job identity {text!r} from the SPANK plugin") from None


def parse_step(text: str) -> Step:
    """``"12.4294967291"`` (as the plugin prints it) -> Step("12", "batch")."""
    job, sep, step = text.partition(".")
    if not sep or not job.isdigit() or not step.isdigit():
        raise SchedulerError(f"bad step id {text!r} from the SPANK plugin")
    return Step(job, SPECIAL_STEPS.get(int(step), step))


def parse_spank_options(pairs: List[str]) -> Dict[str, Optional[str]]:
    """``["hpccont-image=a.sif", "container-nv"]`` -> option dict in common.py's spelling."""
    found: Dict[str, Optional[str]] = {}
    for p in pairs:
        name, sep, value = p.partition("=")
        if name == IMAGE_OPTION:
            name = "container"
        found[name] = value if sep else None
    return found


def job_options(spank: Mapping[str, Optional[str]], environ: Mapping[str, str]) -> JobOptions:
    """Typed options beat the ``HPCCONT_CONTAINER*`` variables, one by one."""
    merged = options_from_env(environ)
    merged.update(spank)
    return parse_options(merged)


# -- decisions ------------------------------------------------------------------------------------
def _wraps(step: Step, args: PluginArgs) -> bool:
    rule = STEP_KINDS[step.kind]
    return getattr(args, rule) if isinstance(rule, str) else rule


def skip_reason(opts: JobOptions, step: Step, args: PluginArgs, program: List[str]) -> str:
    """Why this task runs without a container ("" when it gets one)."""
    if not opts.wanted:
        return "no container requested"
    if not _wraps(step, args):
        return f"{step.kind} steps are not wrapped here"
    if program and os.path.basename(program[0]) in SELF_LAUNCHERS:
        return f"{os.path.basename(program[0])} starts its own container"
    return ""


def search_dirs(environ: Mapping[str, str], cwd: str) -> List[str]:
    """Where a relative image path may have been typed, best first."""
    dirs = [environ.get(CWD_VAR, ""), cwd, environ.get("SLURM_SUBMIT_DIR", "")]
    seen: List[str] = []
    for d in dirs:
        if d and d not in seen:
            seen.append(d)
    return seen


def find_image(image: str, environ: Mapping[str, str], cwd: str, image_dirs: List[str]) -> str:
    """common.resolve_image takes one submit directory; a step has several candidates."""
    dirs = search_dirs(environ, cwd)
    for d in dirs[:-1]:
        try:
            return resolve_image(image, d, [])
        except ImageError:
            pass
    try:
        return resolve_image(image, dirs[-1] if dirs else cwd, image_dirs)
    except ImageError:
        where = ", ".join(dirs + list(image_dirs))
        raise ImageError(f"container image {image!r} not found (looked in {where})") from None


def image_kind(path: str) -> str:
    """sif | squashfs | sandbox, or ImageError with the reason (as the user: permissions count).

    OCI bundle directories get their own message: Slurm's own --container is for them."""
    if os.path.isfile(os.path.join(path, "config.json")) and \
            os.path.isdir(os.path.join(path, "rootfs")):
        raise ImageError(f"{path} is an OCI bundle, not an hpccont image "
                         "(Slurm's own --container handles OCI bundles)")
    from ..image.source import open_image
    return open_image(path).kind


def check_signature(path: str, kind: str) -> None:
    """Only with ``require_signature=yes``.  Fails closed when signing is not installed."""
    if kind != "sif":
        raise ImageError(f"{path}: this site runs only signed SIF images (require_signature)")
    try:
        from ..image import sign  # lazy: cryptography
    except ImportError:
        raise SchedulerError("require_signature=yes but signature support is not installed")
    verify = getattr(sign, "verify_image", None) or getattr(sign, "verify", None)
    if verify is None:
        raise SchedulerError("require_signature=yes but signature support is not installed")
    verify(path)


def tasks_on_this_node(environ: Mapping[str, str]) -> int:
    """From SLURM_STEP_TASKS_PER_NODE ("64", "2(x3),1") and SLURM_NODEID; 0 when unknown."""
    counts: List[int] = []
    for part in environ.get("SLURM_STEP_TASKS_PER_NODE", "").split(","):
        n, _, rep = part.partition("(x")
        if not n.isdigit():
            return 0
        counts += [int(n)] * (int(rep.rstrip(")")) if rep.rstrip(")").isdigit() else 1)
    node = environ.get("SLURM_NODEID", "0")
    return counts[int(node)] if node.isdigit() and int(node) < len(counts) else 0


# Variables through which Slurm's MPI plugins name directories their servers made for this
# step; the tasks' MPI libraries open them at the same paths, so each is bound where it is.
# (PMIx: the server's rendezvous dir in SlurmdSpoolDir/pmix.J.S and the client dirs under
# TmpFS; PMI2 needs only its inherited socket.)
STEP_DIR_VARS = ("PMIX_SERVER_TMPDIR", "PMIX_SYSTEM_TMPDIR", "SLURM_PMIX_TMPDIR", "PMIX_TMPDIR")

# PMIx MCA aliases: Slurm's server exports the legacy names, PMIx >= 4 clients in an image read
# the MCA ones (as enroot's PMIx hook sets them).
PMIX_ALIASES = (("PMIX_MCA_ptl", "PMIX_PTL_MODULE"), ("PMIX_MCA_psec", "PMIX_SECURITY_MODE"),
                ("PMIX_MCA_gds", "PMIX_GDS_MODULE"))


def step_binds(step: Step, program: List[str], environ: Mapping[str, str]) -> list:
    """Files of Slurm's own that the tasks must see at their host paths, wherever the site keeps
    SlurmdSpoolDir and TmpFS: the batch script (read-only, the one file: other jobs' spool
    files stay hidden), and the step's PMIx directories."""
    from ..runtime.request import Bind
    out = []
    if step.kind == "batch" and program and os.path.isabs(program[0]):
        out.append(Bind(program[0], program[0], readonly=True))
    for var in STEP_DIR_VARS:
        d = os.path.normpath(environ.get(var, "") or ".")
        if os.path.isabs(d) and d != "/" and os.path.isdir(d) and \
                all(b.src != d for b in out):
            out.append(Bind(d, d))
    return out


def step_env(environ: Mapping[str, str]) -> Dict[str, str]:
    """Variables every task of the step gets in its container (beside the job's own)."""
    env = {STEP_VAR: ""}
    for alias, legacy in PMIX_ALIASES:
        if legacy in environ and alias not in environ:
            env[alias] = environ[legacy]
    return env


def plan_task(step: Step, args: PluginArgs, spank: Mapping[str, Optional[str]],
              program: List[str], environ: Mapping[str, str], cwd: str) -> TaskPlan:
    """The whole decision for one task, without side effects."""
    from .common import job_request
    opts = job_options(spank, environ)
    reason = skip_reason(opts, step, args, program)
    if reason:
        return TaskPlan(argv=list(program), reason=reason)
    if not program:
        raise UsageError("no command to run in the container")
    image = find_image(opts.image or "", environ, cwd, args.image_dirs)
    kind = image_kind(image)
    if args.require_signature:
        check_signature(image, kind)
    opts.image = image
    env = step_env(environ)
    env[STEP_VAR] = step.key
    # Passed as the request's own variables so that they survive --container-cleanenv.
    full_env = dict(environ)
    full_env.update(env)
    opts.env_names = list(opts.env_names) + [n for n in env if n not in opts.env_names]
    # One container per node per step: every task of the step joins the first one's namespaces.
    # A lone task has nobody to share with, and the shared container's keeper outlives it.
    join = None if tasks_on_this_node(environ) == 1 else step.key
    req = job_request(opts, program, full_env, join=join,
                      scheduler_binds=step_binds(step, program, environ))
    return TaskPlan(argv=list(program), image=image, env=env, request=req)


# -- the task: exec the plan ----------------------------------------------------------------------
def _exec_plain(program: List[str]) -> int:
    """Run the task as slurmstepd would have (PATH search in the job environment)."""
    try:
        os.execvp(program[0], program)
    except OSError as e:
        sys.stderr.write(f"slurmstepd: error: execve(): {program[0]}: {e.strerror}\n")
        return 127 if isinstance(e, FileNotFoundError) else 126


def _first_on_node() -> bool:
    return os.environ.get("SLURM_LOCALID", "0") == "0"


def run_task(step: Step, args: PluginArgs, spank: Dict[str, Optional[str]],
             program: List[str]) -> int:
    """Exec the task.  Returns only on failure (the exit status for the task)."""
    try:
        plan = plan_task(step, args, spank, program, os.environ, os.getcwd())
        if plan.request is None:
            return _exec_plain(program) if program else 0
        os.environ.update(plan.env)
        from ..runtime.launch import launch   # the runtime, in this process: one interpreter
        return launch(plan.request)
    except HpccontError as e:
        # Every task fails the same way; one line per node keeps srun's output readable.
        if _first_on_node():
            sys.stderr.write(f"hpccont: step {step.key}: {e.one_line()}\n")
        return e.exit_code


# -- the step's shared container, prepared once per node ----------------------------------------
# The plugin runs ``hpccont slurm prepare`` once per node per step (slurm_spank_user_init, as the
# user) for steps with several tasks on the node.  It starts the step's container (a persistent
# join keeper, see runtime/join.py) and prints a *recipe* on stdout; the plugin keeps it in
# slurmstepd's memory, and each forked task enters the keeper's namespaces in C and execs its
# command with no Python at all (spank_plugin/recipe.c).  No recipe (anything failed, or a
# warning to show): the tasks take the ``hpccont slurm task`` path, which reports the error.
#
# Recipe format: a sequence of NUL-terminated fields, each a one-byte tag and its payload.
RECIPE_TAGS = {
    "m": "mode: rootless | root",
    "p": "keeper PID",
    "t": "keeper start time (/proc/PID/stat field 22: a reused PID does not match)",
    "h": "host working directory prepare saw (a task elsewhere falls back to the Python path)",
    "w": "working directory inside the container",
    "a": "argv prefix, one field per word (the env-script shell), before the task's argv",
    "K": "--cleanenv: keep only the 'k' names (payload empty)",
    "k": "name kept with --cleanenv",
    "u": "name removed from the task's environment",
    "U": "prefix: names starting with it are removed",
    "s": "NAME=VALUE set",
    "c": "name copied from the task's own environment after the 's' fields",
    "f": "state file removed when the step ends",
}


@record
class Recipe:
    mode: str
    keeper: int
    keeper_start: str
    host_cwd: str
    cwd: str
    prefix: List[str]
    env: "EnvDelta"   # noqa: F821 (runtime.environment, imported lazily)
    state_files: List[str]


def recipe_bytes(r: Recipe) -> bytes:
    fields = [("m", r.mode), ("p", str(r.keeper)), ("t", r.keeper_start), ("h", r.host_cwd),
              ("w", r.cwd)]
    fields += [("a", a) for a in r.prefix]
    if r.env.keep_only is not None:
        fields += [("K", "")] + [("k", n) for n in r.env.keep_only]
    fields += [("u", n) for n in r.env.unset] + [("U", p) for p in r.env.unset_prefixes]
    fields += [("s", f"{k}={v}") for k, v in r.env.set.items()]
    fields += [("c", n) for n in r.env.copy] + [("f", f) for f in r.state_files]
    out = b""
    for tag, payload in fields:
        data = payload.encode("utf-8", "surrogateescape")
        if b"\0" in data:
            raise SchedulerError(f"recipe field {tag!r} contains a NUL byte")
        out += tag.encode() + data + b"\0"
    return out


def parse_recipe(data: bytes) -> Dict[str, List[str]]:
    """tag -> payloads in order (tests and debugging; the plugin parses it in C)."""
    out: Dict[str, List[str]] = {}
    for f in data.split(b"\0")[:-1]:
        out.setdefault(f[:1].decode(), []).append(f[1:].decode("utf-8", "surrogateescape"))
    return out


def prepare_step(step: Step, args: PluginArgs, spank: Mapping[str, Optional[str]],
                 program: List[str], environ: Mapping[str, str], cwd: str) -> Optional[Recipe]:
    """Start the step's container on this node; the recipe for its tasks, or None (then every
    task goes through run_task).  A lone task too: entering a prepared container costs it less
    than starting one, and its FUSE server is not its child then."""
    tplan = plan_task(step, args, spank, program, environ, cwd)
    if tplan.image is None:
        return None
    from .. import config
    from ..runtime import join
    from ..runtime.apply import _ld_first
    from ..runtime.environment import apply_delta, env_script, environment_delta
    from ..runtime.plan import make_plan
    # Variables passed by name differ from task to task (SLURM_PROCID): each task copies its own
    # value instead of the one this process sees.
    pass_names = [n for n in job_options(spank, environ).env_names if n != STEP_VAR]
    full_env = dict(environ)
    full_env.update(tplan.env)
    req = tplan.request
    req.join = req.join or step.key
    for n in pass_names:
        req.env.pop(n, None)
    cfg = config.load()
    plan = make_plan(req, cfg, full_env, cwd)
    if plan.warnings or not plan.join:
        return None
    delta = environment_delta(full_env, cleanenv=req.cleanenv, user_env=req.env,
                              home=plan.identity.home, user=plan.identity.user,
                              image_path=plan.image.path, pass_names=pass_names)
    # make_plan also merged the host adapters' additions (--nv, --mpi bind) and their paths:
    # take every value the rules set, and every difference, from the plan itself.
    # (Compared without the per-task copies: the plan was made without those names.)
    copy, delta.copy = delta.copy, []
    base = apply_delta(delta, full_env)
    delta.set = {k: v for k, v in plan.env.items() if k in delta.set or base.get(k) != v}
    if apply_delta(delta, full_env) != plan.env:
        return None    # not expressible as a delta: keep the exact path
    delta.copy = copy
    # slurmstepd forked us: if it dies, the keeper must not outlive it (see the plugin).
    pid, scripts = join.ensure_keeper(plan, cfg, persistent=True, watch_pid=os.getppid())
    prefix = []
    if scripts:
        script = env_script(plan.env_overrides, _ld_first(plan), plan.env_dirs)
        evaluated = _evaluated_environment(pid, plan, script)
        merged = _with_scripts_applied(delta, full_env, evaluated) if evaluated else None
        if merged is not None:
            delta = merged       # tasks exec their command directly: no shell per task
        else:
            prefix = ["/bin/sh", "-c", script, "hpccont"]
    d = join.state_dir(cfg)
    name = join.state_name(plan)
    return Recipe(mode=plan.mode, keeper=pid, keeper_start=join._start_time(pid),
                  host_cwd=os.getcwd(), cwd=plan.cwd, prefix=prefix, env=delta,
                  state_files=[os.path.join(d, name + s) for s in ("", ".lock", ".guests")])


def _evaluated_environment(keeper: int, plan, script: str) -> Optional[Dict[str, str]]:
    """The environment the image's /.singularity.d/env scripts give a command, evaluated once in
    the step's container exactly as a task's shell would (same script, same environment, same
    directory); None when that fails."""
    from ..runtime import join
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(r)
            join._enter(keeper, plan)
            os.chdir(plan.cwd)
            os.dup2(w, 1)
            os.dup2(os.open("/dev/null", os.O_WRONLY), 2)
            os.execve("/bin/sh", ["/bin/sh", "-c", script, "hpccont", "cat", "/proc/self/environ"],
                      plan.env)
        finally:
            os._exit(127)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(child, 0)
    if status != 0 or not data:
        return None
    items = data.decode("utf-8", "surrogateescape").split("\0")
    return dict(item.split("=", 1) for item in items if "=" in item)


def _with_scripts_applied(delta, environ: Mapping[str, str], evaluated: Dict[str, str]):
    """``delta`` extended by what the image's scripts changed, so that tasks need no shell; None
    when that cannot be said as a delta.  Variables each task copies from its own environment
    (``--container-env``) are copied last: the host's value wins over the image's."""
    from ..runtime.environment import EnvDelta, apply_delta
    copied = set(delta.copy)
    before = apply_delta(delta, dict(environ))
    removed = [k for k in before if k not in evaluated and k not in copied]
    changed = {k: v for k, v in evaluated.items() if before.get(k) != v and k not in copied}
    merged = EnvDelta(set={k: v for k, v in delta.set.items() if k not in removed},
                      overrides=dict(delta.overrides), unset=tuple(delta.unset),
                      unset_prefixes=tuple(delta.unset_prefixes), keep_only=delta.keep_only,
                      copy=list(delta.copy))
    merged.set.update(changed)
    if merged.keep_only is not None:
        merged.keep_only = tuple(k for k in merged.keep_only if k not in removed)
    else:
        merged.unset = merged.unset + tuple(removed)
    want = {k: v for k, v in evaluated.items() if k not in copied}
    want.update({k: before[k] for k in copied if k in before})
    return merged if apply_delta(merged, dict(environ)) == want else None


def run_prepare(step: Step, args: PluginArgs, spank: Dict[str, Optional[str]],
                program: List[str]) -> int:
    """Writes the recipe to stdout; exit 0 with no output when the tasks take the Python path."""
    pwd = os.environ.get("PWD", "")
    if pwd and os.path.isdir(pwd):
        os.chdir(pwd)      # slurmstepd's own directory until the tasks chdir to the step's
    from ..runtime.launch import current_dir
    recipe = prepare_step(step, args, spank, program, os.environ, current_dir())
    if recipe is not None:
        os.write(1, recipe_bytes(recipe))
    return 0


# -- accounting -----------------------------------------------------------------------------------
@record
class StepRecord:
    time: str
    job: str
    step: str
    node: str
    user: str
    uid: int
    image: str
    kind: str
    sha256: str
    size: int
    options: Dict[str, Optional[str]]
    error: str = ""


# The job variables ``record`` reads (it gets them as arguments; see spank_plugin/stepd_side.c).
RECORD_ENV = ("PWD", "SLURM_SUBMIT_DIR", "SLURM_JOB_USER", CWD_VAR)


def record_environ(jobenv: Mapping[str, str]) -> Dict[str, str]:
    """The part of the job's environment accounting uses; the rest never reaches root's code."""
    keep = set(RECORD_ENV) | {env_name(o) for o in OPTION_TABLE}
    return {k: v for k, v in jobenv.items() if k in keep}


def _digest_cache_path(log: str) -> str:
    return log + ".digests"


def _root_only_dir(path: str) -> None:
    """The accounting files go only where no user can write (or plant a symlink)."""
    import stat as stat_mod
    st = os.lstat(path)
    if not stat_mod.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise SchedulerError(f"{path} must be a directory owned by root and writable by root only")


def file_digest(fd: int, log: str) -> Tuple[str, int]:
    """sha256 of the regular file open on ``fd``, cached next to the log.

    The key is (dev, inode, size, mtime, ctime): rewriting a file in place and restoring its
    mtime still changes its ctime, which no user can set.  The cache is root's (0600).
    """
    import hashlib
    import json
    import stat as stat_mod
    st = os.fstat(fd)
    if not stat_mod.S_ISREG(st.st_mode):
        return "", 0
    key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    cache_file = _digest_cache_path(log)
    try:
        with open(cache_file) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key], st.st_size
    h = hashlib.sha256()
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            break
        h.update(chunk)
        offset += len(chunk)
    cache[key] = h.hexdigest()
    tmp = f"{cache_file}.{os.getpid()}"
    try:
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600)
        with os.fdopen(out, "w") as f:
            json.dump(dict(list(cache.items())[-1000:]), f)
        os.replace(tmp, cache_file)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return cache[key], st.st_size


def locate_image(image: str, environ: Mapping[str, str], cwd: str,
                 image_dirs: List[str]) -> Tuple[str, str, int]:
    """Find and open the image as the calling process: (path, kind, fd)."""
    from ..privsep import open_checked
    path = find_image(image, environ, cwd, image_dirs)
    kind = image_kind(path)
    fd, real = open_checked(path, "dir" if kind == "sandbox" else "file")
    return path, kind, fd


def locate_image_as_user(ident: JobIdentity, image: str, environ: Mapping[str, str], cwd: str,
                         image_dirs: List[str]) -> Tuple[str, str, int]:
    """locate_image in a child that is the job's user: root gets the descriptor, never opens
    the user's path itself (a root-only file stays unread, a FIFO cannot hang the step)."""
    from ..privsep import run_as_user

    def as_user():
        path, kind, fd = locate_image(image, environ, cwd, image_dirs)
        return f"{kind}\0{path}", [fd]
    text, fds = run_as_user(as_user, ident.uid, ident.gid, ident.groups)
    kind, _, path = text.partition("\0")
    return path, kind, fds[0]


def make_record(step: Step, args: PluginArgs, spank: Dict[str, Optional[str]],
                environ: Mapping[str, str], ident: Optional[JobIdentity] = None
                ) -> Optional[StepRecord]:
    """The accounting line for a step on this node, or None when the step has no container.
    ``ident``: the job's user, as whom the image is opened (None: the caller's own rights)."""
    import socket
    import time
    try:
        opts = job_options(spank, environ)
    except HpccontError:
        return None    # the tasks fail with the message; nothing ran
    if skip_reason(opts, step, args, []):
        return None
    user = environ.get("SLURM_JOB_USER", "")
    if ident is not None:
        import pwd
        try:
            user = pwd.getpwuid(ident.uid).pw_name
        except KeyError:
            user = str(ident.uid)
    rec = StepRecord(time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), job=step.job, step=step.step,
                     node=socket.gethostname().split(".")[0], user=user,
                     uid=ident.uid if ident is not None else -1,
                     image=opts.image or "", kind="", sha256="", size=0, options=dict(spank))
    cwd = environ.get("PWD") or environ.get("SLURM_SUBMIT_DIR") or "/"
    fd = -1
    try:
        if ident is None:
            rec.image, rec.kind, fd = locate_image(opts.image or "", environ, cwd, args.image_dirs)
        else:
            rec.image, rec.kind, fd = locate_image_as_user(ident, opts.image or "", environ, cwd,
                                                           args.image_dirs)
        if rec.kind != "sandbox":
            rec.sha256, rec.size = file_digest(fd, args.accounting)
    except (HpccontError, OSError) as e:
        rec.error = e.one_line() if isinstance(e, HpccontError) else str(e)
    finally:
        if fd >= 0:
            os.close(fd)
    return rec


def append_record(rec: StepRecord, log: str) -> None:
    import json
    os.makedirs(os.path.dirname(log) or ".", mode=0o755, exist_ok=True)
    if os.geteuid() == 0:
        _root_only_dir(os.path.dirname(os.path.abspath(log)))
    line = json.dumps(rec.to_dict(), sort_keys=True) + "\n"
    # O_APPEND: several steps on a node write concurrently; one write() per line stays whole.
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def admin_comment(rec: StepRecord) -> str:
    return f"hpccont:{rec.image}@sha256:{rec.sha256 or '-'}"


def set_admin_comment(rec: StepRecord, args: PluginArgs) -> None:
    """Best effort and not waited for: the step must not start later because of it.  Runs as
    root: scontrol from the system directories, with root's fixed environment."""
    import subprocess
    from ..privsep import ROOT_ENV, system_program
    env = dict(ROOT_ENV)
    if args.slurm_conf:
        env["SLURM_CONF"] = args.slurm_conf
    try:
        subprocess.Popen([system_program("scontrol"), "update", f"JobId={rec.job}",
                          f"AdminComment={admin_comment(rec)}"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=env, start_new_session=True,
                         close_fds=True)
    except (OSError, HpccontError):
        pass


def run_record(step: Step, args: PluginArgs, spank: Dict[str, Optional[str]],
               jobenv: Mapping[str, str], ident: Optional[JobIdentity]) -> int:
    if os.geteuid() != 0:
        raise SchedulerError("'hpccont slurm record' is run by slurmstepd as root")
    if ident is None:
        raise SchedulerError("'hpccont slurm record' needs --user from the SPANK plugin")
    rec = make_record(step, args, spank, record_environ(jobenv), ident)
    if rec is None:
        return 0
    append_record(rec, args.accounting)
    if args.admin_comment and not rec.error and step.kind in ("batch", "step", "interactive"):
        set_admin_comment(rec, args)
    return 0


def read_records(log: str) -> List[dict]:
    """Every record in a node's accounting log (admins read it; lines that do not parse are skipped)."""
    import json
    try:
        with open(log) as f:
            lines = f.readlines()
    except FileNotFoundError:
        return []
    except PermissionError:
        raise SchedulerError(f"cannot read {log}: the step accounting log is for admins")
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def queue_jobs(environ: Optional[Mapping[str, str]] = None) -> Dict[str, dict]:
    """jobid -> squeue --json job object ({} when squeue is missing or fails)."""
    import json
    import subprocess
    try:
        r = subprocess.run(["squeue", "--json"], capture_output=True, text=True, timeout=30,
                           env=dict(environ) if environ is not None else None)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if r.returncode != 0:
        return {}
    try:
        data = json.loads(r.stdout)
    except ValueError:
        return {}
    return {str(j.get("job_id")): j for j in data.get("jobs", [])}
