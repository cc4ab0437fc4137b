"""Slurm task policy: what each task of a containered step runs, decided without side effects.

The C plugin execs ``hpccont slurm task`` in each task (as the user, in the step's cgroup,
keeping the task's PID) unless the step's prepared container can be entered in C (recipe.py).
Every decision is made here:

- which steps are wrapped (``STEP_KINDS``): a normal srun step always, the batch script only with
  the plugstack switch ``wrap_batch``, the extern step never;
- options: ``--hpccont-image`` (what ``--container`` becomes through the cli_filter) and the
  ``--container-*`` options beat the ``HPCCONT_CONTAINER*`` variables of the job environment, so a
  step inside a batch job inherits the job's container unless it names another or ``none``;
- no task is wrapped twice: a task that is itself a container launch is left alone;
- Slurm's own files (the batch script, PMIx directories) are bound where Slurm keeps them;
- errors: one line per node (the node's first task), the same exit status from every task.

This module is on the path of every task: it imports only the stdlib it needs.
"""
from __future__ import annotations

import os
import sys
TYPE_CHECKING = False   # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Dict, List, Mapping, Optional

    from ...runtime.request import ContainerRequest

from ...errors import HpccontError, ImageError, UsageError
from ...record import factory, record
from ..common import (JobOptions, is_registry_ref, options_from_env, parse_options, resolve_image,
                      starts_own_container)
from .plugin import STEP_KINDS, PluginArgs, StepId

# Variable set in every wrapped task: which step's container it runs in.
STEP_VAR = "HPCCONT_SLURM_STEP"
# Where the client typed the options (set by the plugin on srun/sbatch/salloc).
CWD_VAR = "HPCCONT_SLURM_CWD"


@record
class TaskPlan:
    """What one task execs: ``request`` in the container, or ``argv`` as Slurm would run it
    (``image`` None, with the ``reason``)."""
    argv: List[str]
    image: Optional[str] = None
    reason: str = ""
    env: Dict[str, str] = factory(dict)
    request: Optional[ContainerRequest] = None


def job_options(spank: Mapping[str, Optional[str]], environ: Mapping[str, str]) -> JobOptions:
    """Typed options beat the ``HPCCONT_CONTAINER*`` variables, one by one."""
    merged = options_from_env(environ)
    merged.update(spank)
    return parse_options(merged)


# -- decisions ------------------------------------------------------------------------------------
def _wraps(step: StepId, args: PluginArgs) -> bool:
    rule = STEP_KINDS[step.kind]
    return getattr(args, rule) if isinstance(rule, str) else rule


def skip_reason(opts: JobOptions, step: StepId, args: PluginArgs, program: List[str]) -> str:
    """Why this task runs without a container ("" when it gets one)."""
    if not opts.wanted:
        return "no container requested"
    if not _wraps(step, args):
        return f"{step.kind} steps are not wrapped here"
    if starts_own_container(program):
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
    if is_registry_ref(image):
        return resolve_image(image, cwd, [], environ)
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


def found_first(image: str, path: str, environ: Mapping[str, str], cwd: str) -> bool:
    """Whether ``image`` finds ``path`` whatever appears later in the other places searched:
    an absolute name, or a relative one found in the first directory searched.  The C paths
    that reuse a search's result (step and accounting templates) open ``path`` again; a file
    that later appears in an earlier directory would be found first by a new search."""
    if is_registry_ref(image):
        return False
    if os.path.isabs(image):
        return True
    dirs = search_dirs(environ, cwd)
    return os.path.normpath(os.path.join(dirs[0] if dirs else cwd, image)) == path


def image_kind(path: str) -> str:
    """sif | squashfs | sandbox, or ImageError with the reason (as the user: permissions count).

    OCI bundle directories get their own message: Slurm's own --container is for them."""
    if os.path.isfile(os.path.join(path, "config.json")) and \
            os.path.isdir(os.path.join(path, "rootfs")):
        raise ImageError(f"{path} is an OCI bundle, not an hpccont image "
                         "(Slurm's own --container handles OCI bundles)")
    from ...image.source import open_image
    return open_image(path).kind


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
# (PMI2 needs only its inherited socket.)
STEP_DIR_VARS = ("PMIX_SERVER_TMPDIR", "PMIX_SYSTEM_TMPDIR", "SLURM_PMIX_TMPDIR", "PMIX_TMPDIR")
# A PMIx step's job environment carries these before the tasks get the PMIX_* variables; prepare
# (run before any task exists) sees only them, and finds the directories by Slurm's layout:
# SlurmdSpoolDir/pmix.JOB.STEP (the server's rendezvous) and TmpFS/spmix_appdir_UID_JOB.STEP.
PMIX_STEP_VARS = ("PMIX_SERVER_TMPDIR", "SLURM_PMIX_MAPPING_SERV", "SLURM_PMIXP_ABORT_AGENT_PORT")

# PMIx MCA aliases: Slurm's server exports the legacy names, PMIx >= 4 clients in an image read
# the MCA ones (as enroot's PMIx hook sets them).
PMIX_ALIASES = (("PMIX_MCA_ptl", "PMIX_PTL_MODULE"), ("PMIX_MCA_psec", "PMIX_SECURITY_MODE"),
                ("PMIX_MCA_gds", "PMIX_GDS_MODULE"))


def step_binds(step: StepId, program: List[str], environ: Mapping[str, str],
               is_dir=os.path.isdir) -> list:
    """Files of Slurm's own that the tasks must see at their host paths, wherever the site keeps
    SlurmdSpoolDir and TmpFS: the batch script (read-only, the one file: other jobs' spool
    files stay hidden), and the step's PMIx directories.  ``is_dir``: whether a directory
    exists (template.py plans a step under another name, judged by the real step's)."""
    from ...runtime.request import Bind
    out = []
    if step.kind == "batch" and program and os.path.isabs(program[0]):
        out.append(Bind(program[0], program[0], readonly=True))
    dirs = [environ.get(var, "") for var in STEP_DIR_VARS] + pmix_step_dirs(step, environ)
    for d in dirs:
        d = os.path.normpath(d or ".")
        if os.path.isabs(d) and d != "/" and is_dir(d) and \
                all(b.src != d for b in out):
            out.append(Bind(d, d))
    return out


def step_binds_of_environment(environ: Mapping[str, str]) -> list:
    """step_binds for a process that is a task of a Slurm step by its environment (a launch
    the plugin did not make): the step's PMIx directories, no batch script."""
    job, step = environ.get("SLURM_JOB_ID", ""), environ.get("SLURM_STEP_ID", "")
    if not job.isdigit() or not step.isdigit():
        return []
    return step_binds(StepId(job, step), [], environ)


def pmix_step_dirs(step: StepId, environ: Mapping[str, str]) -> List[str]:
    """The directories Slurm's PMIx plugin made for this step on this node (see PMIX_STEP_VARS);
    [] for other steps, or when slurm.conf cannot be read."""
    if not any(v in environ for v in PMIX_STEP_VARS):
        return []
    from . import conf as slurm_conf
    conf = slurm_conf.find(environ)
    if conf is None:
        return []
    node = slurm_conf.node_name(environ)
    key = f"{step.job}.{step.step}"
    return [os.path.join(slurm_conf.node_dir(conf, "SlurmdSpoolDir", node), f"pmix.{key}"),
            os.path.join(slurm_conf.node_dir(conf, "TmpFS", node),
                         f"spmix_appdir_{os.getuid()}_{key}")]


def step_env(environ: Mapping[str, str]) -> Dict[str, str]:
    """Variables every task of the step gets in its container (beside the job's own)."""
    env = {STEP_VAR: ""}
    for alias, legacy in PMIX_ALIASES:
        if legacy in environ and alias not in environ:
            env[alias] = environ[legacy]
    return env


def plan_task(step: StepId, args: PluginArgs, spank: Mapping[str, Optional[str]],
              program: List[str], environ: Mapping[str, str], cwd: str,
              is_dir=os.path.isdir) -> TaskPlan:
    """The whole decision for one task, without side effects (``is_dir``: step_binds')."""
    from ..common import job_request
    opts = job_options(spank, environ)
    reason = skip_reason(opts, step, args, program)
    if reason:
        return TaskPlan(argv=list(program), reason=reason)
    if not program:
        raise UsageError("no command to run in the container")
    image = find_image(opts.image or "", environ, cwd, args.image_dirs)
    image_kind(image)       # a clear message for what is no image (signatures: the runtime)
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
                      scheduler_binds=step_binds(step, program, environ, is_dir))
    return TaskPlan(argv=list(program), image=image, env=env, request=req)


# -- the task: exec the plan ----------------------------------------------------------------------
def _exec_plain(program: List[str]) -> int:
    """Run the task as slurmstepd would have (PATH search in the job environment)."""
    from ...runtime.apply import restore_signals
    restore_signals()
    try:
        os.execvp(program[0], program)
    except OSError as e:
        sys.stderr.write(f"slurmstepd: error: execve(): {program[0]}: {e.strerror}\n")
        return 127 if isinstance(e, FileNotFoundError) else 126


def _first_on_node() -> bool:
    return os.environ.get("SLURM_LOCALID", "0") == "0"


def run_task(step: StepId, args: PluginArgs, spank: Dict[str, Optional[str]],
             program: List[str]) -> int:
    """Exec the task.  Returns only on failure (the exit status for the task)."""
    try:
        plan = plan_task(step, args, spank, program, os.environ, os.getcwd())
        if plan.request is None:
            return _exec_plain(program) if program else 0
        os.environ.update(plan.env)
        from ...runtime.launch import launch   # the runtime, in this process: one interpreter
        return launch(plan.request)
    except HpccontError as e:
        # Every task fails the same way; one line per node keeps srun's output readable.
        if _first_on_node():
            sys.stderr.write(f"hpccont: step {step.key}: {e.one_line()}\n")
        return e.exit_code
