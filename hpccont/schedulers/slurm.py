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
from .common import JobOptions, launch_argv, parse_options, options_from_env, resolve_image

# Plugstack arguments (``key=value`` after the plugin path) and their defaults.
PLUGSTACK_DEFAULTS: Dict[str, str] = {
    "hpccont": "/usr/bin/hpccont",            # the executable the plugin execs
    "image_dir": "",                          # ':'-separated dirs for bare names (--container=pytorch)
    "wrap_batch": "yes",                      # run the batch script itself in the container
    "require_signature": "no",                # refuse images whose signature does not verify
    "accounting": "/var/log/hpccont/slurm-steps.jsonl",   # per-node log of image + digest per step
    "admin_comment": "yes",                   # also put the image + digest in the job's AdminComment
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
    """What one task execs.  ``image`` is None when the task runs as Slurm would run it."""
    argv: List[str]
    image: Optional[str] = None
    reason: str = ""
    env: Dict[str, str] = factory(dict)


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
    )


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


def plan_task(step: Step, args: PluginArgs, spank: Mapping[str, Optional[str]],
              program: List[str], environ: Mapping[str, str], cwd: str) -> TaskPlan:
    """The whole decision for one task, without side effects."""
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
    # Passed with --env so that it survives --container-cleanenv.
    opts.env_names = list(opts.env_names) + [STEP_VAR]
    env = {STEP_VAR: step.key}
    full_env = dict(environ)
    full_env.update(env)
    # One container per node per step: every task of the step joins the first one's namespaces.
    # A lone task has nobody to share with, and the shared container's keeper outlives it.
    join = None if tasks_on_this_node(environ) == 1 else step.key
    argv = launch_argv(opts, program, hpccont=args.hpccont, environ=full_env, join=join)
    return TaskPlan(argv=argv, image=image, env=env)


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
    except HpccontError as e:
        # Every task fails the same way; one line per node keeps srun's output readable.
        if _first_on_node():
            sys.stderr.write(f"hpccont: step {step.key}: {e.one_line()}\n")
        return e.exit_code
    if plan.image is None:
        if not program:
            return 0
        return _exec_plain(program)
    os.environ.update(plan.env)
    from ..cli.main import run_command  # the runtime, in this process: one interpreter per task
    return run_command(plan.argv[1], plan.argv[2:])


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
    from ..cli.launch import build_request
    from ..runtime import join
    from ..runtime.apply import _ld_first
    from ..runtime.environment import apply_delta, env_script, environment_delta
    from ..runtime.plan import make_plan
    # Variables passed by name differ from task to task (SLURM_PROCID): each task copies its own
    # value instead of the one this process sees.
    pass_names = [n for n in job_options(spank, environ).env_names if n != STEP_VAR]
    full_env = dict(environ)
    full_env.update(tplan.env)
    req = build_request("exec", tplan.argv[2:], full_env)
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
    when that cannot be said as a delta (a script changed a variable copied per task)."""
    from ..runtime.environment import EnvDelta, apply_delta
    before = apply_delta(delta, dict(environ))
    removed = [k for k in before if k not in evaluated]
    changed = {k: v for k, v in evaluated.items() if before.get(k) != v}
    if any(k in changed or k in removed for k in delta.copy):
        return None
    merged = EnvDelta(set={k: v for k, v in delta.set.items() if k not in removed},
                      overrides=dict(delta.overrides), unset=tuple(delta.unset),
                      unset_prefixes=tuple(delta.unset_prefixes), keep_only=delta.keep_only,
                      copy=list(delta.copy))
    merged.set.update(changed)
    if merged.keep_only is not None:
        merged.keep_only = tuple(k for k in merged.keep_only if k not in removed)
    else:
        merged.unset = merged.unset + tuple(removed)
    return merged if apply_delta(merged, dict(environ)) == evaluated else None


def run_prepare(step: Step, args: PluginArgs, spank: Dict[str, Optional[str]],
                program: List[str]) -> int:
    """Writes the recipe to stdout; exit 0 with no output when the tasks take the Python path."""
    pwd = os.environ.get("PWD", "")
    if pwd and os.path.isdir(pwd):
        os.chdir(pwd)      # slurmstepd's own directory until the tasks chdir to the step's
    from ..cli.launch import current_dir
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


def _digest_cache_path(log: str) -> str:
    return log + ".digests"


def file_digest(path: str, log: str) -> Tuple[str, int]:
    """sha256 of a regular file, cached by (dev, inode, size, mtime) next to the log.

    Opened non-blocking and checked with fstat: the path comes from the user, and this runs as
    root (a FIFO or device must not hang or feed the step start).
    """
    import hashlib
    import json
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        import stat as stat_mod
        if not stat_mod.S_ISREG(st.st_mode):
            return "", 0
        key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
        cache_file = _digest_cache_path(log)
        try:
            with open(cache_file) as f:
                cache = json.load(f)
        except (OSError, ValueError):
            cache = {}
        if key in cache:
            return cache[key], st.st_size
        h = hashlib.sha256()
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            h.update(chunk)
        cache[key] = h.hexdigest()
        try:
            tmp = f"{cache_file}.{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(dict(list(cache.items())[-1000:]), f)
            os.replace(tmp, cache_file)
        except OSError:
            pass
        return cache[key], st.st_size
    finally:
        os.close(fd)


def make_record(step: Step, args: PluginArgs, spank: Dict[str, Optional[str]],
                environ: Mapping[str, str]) -> Optional[StepRecord]:
    """The accounting line for a step on this node, or None when the step has no container."""
    import socket
    import time
    try:
        opts = job_options(spank, environ)
    except HpccontError:
        return None    # the tasks fail with the message; nothing ran
    if skip_reason(opts, step, args, []):
        return None
    rec = StepRecord(time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), job=step.job, step=step.step,
                     node=socket.gethostname().split(".")[0],
                     user=environ.get("SLURM_JOB_USER", ""),
                     uid=int(environ.get("SLURM_JOB_UID", "-1") or -1),
                     image=opts.image or "", kind="", sha256="", size=0, options=dict(spank))
    cwd = environ.get("PWD") or environ.get("SLURM_SUBMIT_DIR") or "/"
    try:
        rec.image = find_image(opts.image or "", environ, cwd, args.image_dirs)
        rec.kind = image_kind(rec.image)
        if rec.kind != "sandbox":
            rec.sha256, rec.size = file_digest(rec.image, args.accounting)
    except (HpccontError, OSError) as e:
        rec.error = e.one_line() if isinstance(e, HpccontError) else str(e)
    return rec


def append_record(rec: StepRecord, log: str) -> None:
    import json
    os.makedirs(os.path.dirname(log) or ".", mode=0o755, exist_ok=True)
    line = json.dumps(rec.to_dict(), sort_keys=True) + "\n"
    # O_APPEND: several steps on a node write concurrently; one write() per line stays whole.
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def admin_comment(rec: StepRecord) -> str:
    return f"hpccont:{rec.image}@sha256:{rec.sha256 or '-'}"


def set_admin_comment(rec: StepRecord, environ: Mapping[str, str]) -> None:
    """Best effort and not waited for: the step must not start later because of it."""
    import subprocess
    try:
        subprocess.Popen(["scontrol", "update", f"JobId={rec.job}", f"AdminComment={admin_comment(rec)}"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=dict(environ), start_new_session=True)
    except OSError:
        pass


def run_record(step: Step, args: PluginArgs, spank: Dict[str, Optional[str]]) -> int:
    if os.geteuid() != 0:
        raise SchedulerError("'hpccont slurm record' is run by slurmstepd as root")
    rec = make_record(step, args, spank, os.environ)
    if rec is None:
        return 0
    append_record(rec, args.accounting)
    if args.admin_comment and not rec.error and step.kind in ("batch", "step", "interactive"):
        set_admin_comment(rec, os.environ)
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
