"""The step's shared container, prepared once per node, and the recipe its tasks enter.

The plugin runs ``hpccont slurm prepare`` once per node per step (slurm_spank_user_init, as the
user).  It starts the step's container (a persistent join keeper, see runtime/join.py) and prints
a *recipe* on stdout; the plugin keeps it in slurmstepd's memory, and each forked task enters the
keeper's namespaces in C and execs its command with no Python at all (spank_plugin/recipe.c).  No
recipe (anything failed, or a warning to show): the tasks take the ``hpccont slurm task`` path,
which reports the error.
"""
from __future__ import annotations

import os
TYPE_CHECKING = False   # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Dict, List, Mapping, Optional

    from ...runtime.environment import EnvDelta

from ...errors import SchedulerError
from ...record import record
# The recipe format, one for the Slurm tasks and the exec fast path: runtime/recipe.py.
from ...runtime.recipe import TAGS as RECIPE_TAGS  # noqa: F401
from .plugin import PluginArgs, StepId
from .task import STEP_VAR, job_options, plan_task



@record
class Recipe:
    mode: str
    keeper: int
    keeper_start: str
    host_cwd: str
    cwd: str
    prefix: List[str]
    env: EnvDelta
    state_files: List[str]


def recipe_fields(r: Recipe) -> List[tuple]:
    fields = [("m", r.mode), ("p", str(r.keeper)), ("t", r.keeper_start), ("h", r.host_cwd),
              ("w", r.cwd)]
    fields += [("a", a) for a in r.prefix]
    if r.env.keep_only is not None:
        fields += [("K", "")] + [("k", n) for n in r.env.keep_only]
    fields += [("u", n) for n in r.env.unset] + [("U", p) for p in r.env.unset_prefixes]
    fields += [("s", f"{k}={v}") for k, v in r.env.set.items()]
    fields += [("c", n) for n in r.env.copy] + [("f", f) for f in r.state_files]
    return fields


def recipe_bytes(r: Recipe) -> bytes:
    out = b""
    for tag, payload in recipe_fields(r):
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


def prepare_step(step: StepId, args: PluginArgs, spank: Mapping[str, Optional[str]],
                 program: List[str], environ: Mapping[str, str], cwd: str) -> Optional[Recipe]:
    """Start the step's container on this node; the recipe for its tasks, or None (then every
    task goes through run_task).  A lone task too: entering a prepared container costs it less
    than starting one, and its FUSE server is not its child then.  Where it can, it also
    records the step's template (template.py), from which the next such step is built in C."""
    planned = _plan_step(step, args, spank, program, environ, cwd)
    if planned is None:
        return None
    from ...runtime import join
    from . import template
    plan, cfg, req, delta, full_env = planned
    d = join.state_dir(cfg)
    why = template.unrecordable(step, plan, cfg, req, job_options(spank, environ).image or "",
                                environ, cwd)
    capture = template.Capture(template.build_file(d), program) if why is None else None
    # slurmstepd forked us: if it dies, the keeper must not outlive it (see the plugin).
    pid, scripts = join.ensure_keeper(plan, cfg, persistent=True, watch_pid=os.getppid(),
                                      capture=capture)
    delta, prefix = _task_environment(pid, scripts, plan, delta, full_env)
    name = join.state_name(plan)
    recipe = Recipe(mode=plan.mode, keeper=pid, keeper_start=join.start_time(pid),
                    host_cwd=os.getcwd(), cwd=plan.cwd, prefix=prefix, env=delta,
                    state_files=[os.path.join(d, name + s) for s in ("", ".lock", ".guests")])
    if capture is not None:
        build = capture.take()
        if build is not None:
            _record_template(step, args, spank, program, environ, cwd, plan, recipe, build,
                             pid, scripts, d)
    return recipe


def _plan_step(step: StepId, args: PluginArgs, spank: Mapping[str, Optional[str]],
               program: List[str], environ: Mapping[str, str], cwd: str,
               is_dir=os.path.isdir):
    """(plan, cfg, request, environment delta, the tasks' environment) for the step's
    container, or None when its tasks take the Python path (``is_dir``: plan_task's)."""
    tplan = plan_task(step, args, spank, program, environ, cwd, is_dir)
    if tplan.image is None:
        return None
    from ... import config
    from ...runtime.environment import apply_delta, environment_delta
    from ...runtime.plan import make_plan
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
    return plan, cfg, req, delta, full_env


def _task_environment(keeper: int, scripts: bool, plan, delta, full_env):
    """(delta, prefix) for the tasks: the image's env scripts applied once, here, when they
    can be said as a delta (no shell per task), else the shell prefix that runs them."""
    from ...runtime.envscripts import shell_prefix
    if not scripts:
        return delta, []
    evaluated = _evaluated_environment(keeper, plan)
    merged = _with_scripts_applied(delta, full_env, evaluated) if evaluated else None
    if merged is not None:
        return merged, []
    return delta, shell_prefix(plan)


def _record_template(step: StepId, args: PluginArgs, spank: Mapping[str, Optional[str]],
                     program: List[str], environ: Mapping[str, str], cwd: str, plan,
                     recipe: Recipe, build: bytes, keeper: int, scripts: bool, d: str) -> None:
    """The step's template, once planning the step under another name (and other VARYING
    values) has given the same container and task recipe (template.py says why)."""
    import sys
    from . import template
    tasks = [(t, v) for t, v in recipe_fields(recipe) if t in template.TASK_TAGS]
    other, other_env, other_is_dir = template.synthetic(step, environ)
    again = _plan_step(other, args, spank, program, other_env, cwd, other_is_dir)
    if again is None:
        return
    plan2, _, _, delta2, full_env2 = again
    delta2, prefix2 = _task_environment(keeper, scripts, plan2, delta2, full_env2)
    r2 = Recipe(mode=plan2.mode, keeper=keeper, keeper_start=recipe.keeper_start,
                host_cwd=recipe.host_cwd, cwd=plan2.cwd, prefix=prefix2, env=delta2,
                state_files=[])
    tasks2 = [(t, v) for t, v in recipe_fields(r2) if t in template.TASK_TAGS]
    if template.signature(plan, tasks, step.key) != template.signature(plan2, tasks2, other.key):
        return
    key = template.material(sys.argv, cwd, template.own_environ())
    try:
        dir_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        template.write(dir_fd, key, build, template.stamps(plan, environ), tasks, step.key)
    except (OSError, ValueError):
        pass             # no template: the next step is planned again
    finally:
        os.close(dir_fd)


def _evaluated_environment(keeper: int, plan) -> Optional[Dict[str, str]]:
    """The environment the image's /.singularity.d/env scripts give a command, evaluated once in
    the step's container by the evaluator every launch uses (runtime/envscripts.py), or by the
    same shell prefix a task would run when the scripts need a shell (same environment, same
    directory); None when that fails."""
    from ...runtime import join
    from ...runtime.envscripts import image_environment, shell_prefix
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(r)
            join.enter_keeper(keeper, plan)
            os.chdir(plan.cwd)
            env = image_environment(plan, plan.env)
            if env is not None:
                os.write(w, b"".join(f"{k}={v}".encode("utf-8", "surrogateescape") + b"\0"
                                     for k, v in env.items()))
                os._exit(0)
            os.dup2(w, 1)
            os.dup2(os.open("/dev/null", os.O_WRONLY), 2)
            os.execve("/bin/sh", shell_prefix(plan) + ["cat", "/proc/self/environ"], plan.env)
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
    from ...runtime.environment import EnvDelta, apply_delta
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


def run_prepare(step: StepId, args: PluginArgs, spank: Dict[str, Optional[str]],
                program: List[str]) -> int:
    """Writes the recipe to stdout; exit 0 with no output when the tasks take the Python path."""
    pwd = os.environ.get("PWD", "")
    if pwd and os.path.isdir(pwd):
        os.chdir(pwd)      # slurmstepd's own directory until the tasks chdir to the step's
    from ...runtime.launch import current_dir
    recipe = prepare_step(step, args, spank, program, os.environ, current_dir())
    if recipe is not None:
        os.write(1, recipe_bytes(recipe))
    return 0
