"""What the PBS hooks decide: job request -> launch command, begin checks, end cleanup.

The hook file (``pbs_hooks/hpccont_launch.py``) is a thin shell: it reads the event into a
``JobContext`` and applies what the functions here return.  Everything is plain data so that
tests (and ``hpccont pbs launch-command``) reach the same decisions without a PBS server.

PBS facts this module relies on (OpenPBS ``pbs_module(7B)``, ``pbs_hook_attributes(7B)``):

- ``execjob_launch`` may change only ``progname``, ``argv`` and ``env``.  MoM runs it for the
  job's top shell on the primary execution host and again for every task spawned through the
  TM interface (``pbsdsh``, ``pbs_tmrsh``, an ``mpiexec`` built with the TM launcher), on
  whichever MoM runs that task.  ``pbs_attach``-ed processes raise ``execjob_attach`` instead:
  they are already running and cannot be wrapped.
- MoM starts the job shell as a login shell: ``argv[0]`` is ``-bash`` while ``progname`` is
  ``/bin/bash``.  The leading dash means nothing once another program sits in front, so it is
  turned into the shell's login flag.
- Hooks run as root (``user=pbsadmin``) in MoM's environment, not the job's.
"""
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ..errors import (ConfigError, HpccontError, ImageError, PolicyError, SignatureError,
                      UsageError)
from ..runtime.policy import under_any
from .common import JobOptions, env_name, launch_argv, options_from_env, parse_options, resolve_image

# Custom PBS resource -> job option (common.OPTION_TABLE).  PBS resource names may not hold
# dashes in every release, so resources use underscores.
DEFAULT_RESOURCES: Dict[str, str] = {
    "container": "container",
    "container_bind": "container-bind",
    "container_env": "container-env",
    "container_workdir": "container-workdir",
    "container_writable_tmpfs": "container-writable-tmpfs",
    "container_nv": "container-nv",
    "container_mpi": "container-mpi",
    "container_cleanenv": "container-cleanenv",
    "container_mount_home": "container-mount-home",
}

# resource -> qmgr type; what install-commands creates
RESOURCE_TYPES: Dict[str, str] = {
    "container": "string",
    "container_bind": "string",
    "container_env": "string",
    "container_workdir": "string",
    "container_writable_tmpfs": "boolean",
    "container_nv": "boolean",
    "container_mpi": "string",
    "container_cleanenv": "boolean",
    "container_mount_home": "boolean",
}

# Options whose value is a comma list.  ``qsub -l`` splits on commas, so a resource value may
# use ';' between entries instead.
LIST_OPTIONS = ("container-bind", "container-env")
RESOURCE_LIST_SEPARATOR = ";"

# A program that already is a container launcher is never wrapped again: basename -> the
# sub-commands that start a container (None: the program itself does).
LAUNCHERS: Dict[str, Optional[Tuple[str, ...]]] = {
    "hpccont": ("exec", "run", "shell", "test"),
    "container-exec": None,
    "run-singularity": None,
    "apptainer": ("exec", "run", "shell", "test", "instance"),
    "singularity": ("exec", "run", "shell", "test", "instance"),
}

# Shell basename -> flag that makes it a login shell (MoM marks login shells with argv[0]="-sh").
LOGIN_FLAGS: Dict[str, str] = {
    "bash": "-l", "sh": "-l", "dash": "-l", "zsh": "-l", "ksh": "-l", "mksh": "-l",
    "ash": "-l", "tcsh": "-l", "csh": "-l",
}

# Set in every wrapped task's environment.  Inherited by whatever the runtime leaves behind
# (FUSE servers, joined-container holders), which is how execjob_end finds them again.
JOB_MARKER = "HPCCONT_PBS_JOBID"

# hook config key -> (type, default)
HOOK_CONFIG_SCHEMA: Dict[str, tuple] = {
    "hpccont": (str, "/usr/bin/hpccont"),     # absolute path of hpccont on the execution hosts
    "pythonpath": (list, []),                 # where the hook finds the hpccont package
    "site_config": (str, ""),                 # hpccont.yaml; "" = HPCCONT_CONFIG or the default
    "resources": (dict, None),                # custom resource -> option; None = DEFAULT_RESOURCES
    "wrap_job_script": (bool, True),          # the job's top shell runs in the container
    "wrap_tm_tasks": (bool, True),            # pbsdsh / TM mpiexec tasks run in the container
    "join": (bool, False),                    # tasks of a job on one host share one container
    "never_wrap": (list, []),                 # program basenames always left on the host
    "on_reject": (str, "delete"),             # execjob_begin refusal: delete | requeue the job
    "verify_command": (list, []),             # signature check; [] = [hpccont, "verify"]
    "cleanup_grace": (int, 5),                # seconds between SIGTERM and SIGKILL at job end
    "debug": (bool, False),                   # log every decision to the MoM log
}
ON_REJECT = ("delete", "requeue")


@dataclass
class HookConfig:
    hpccont: str = "/usr/bin/hpccont"
    pythonpath: List[str] = field(default_factory=list)
    site_config: str = ""
    resources: Dict[str, str] = field(default_factory=lambda: dict(DEFAULT_RESOURCES))
    wrap_job_script: bool = True
    wrap_tm_tasks: bool = True
    join: bool = False
    never_wrap: List[str] = field(default_factory=list)
    on_reject: str = "delete"
    verify_command: List[str] = field(default_factory=list)
    cleanup_grace: int = 5
    debug: bool = False


@dataclass
class JobContext:
    """What a hook event says about the job, as plain data."""
    job_id: str
    variables: Dict[str, str] = field(default_factory=dict)    # job's Variable_List
    resources: Dict[str, Any] = field(default_factory=dict)    # Resource_List (our resources)
    env: Optional[Dict[str, str]] = None                       # execjob_launch: event.env
    progname: Optional[str] = None                             # execjob_launch
    argv: Optional[List[str]] = None                           # execjob_launch
    primary: bool = True                                       # job.in_ms_mom()


@dataclass
class LaunchDecision:
    wrap: bool
    reason: str
    progname: str = ""
    argv: List[str] = field(default_factory=list)
    env_set: Dict[str, str] = field(default_factory=dict)      # added to event.env
    image: Optional[str] = None


@dataclass
class CleanupPlan:
    """What execjob_end removes for a job on this host."""
    job_id: str
    key: str
    pids: List[int] = field(default_factory=list)
    mounts: List[str] = field(default_factory=list)            # deepest first
    paths: List[str] = field(default_factory=list)


# ---------------------------------------------------------------- hook configuration

def parse_hook_config(raw: Any, source: str = "hook config") -> HookConfig:
    """Validate the JSON imported with ``import hook ... application/x-config``."""
    if raw is None:
        return HookConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: must be a JSON object")
    cfg = HookConfig()
    for key, value in raw.items():
        if key not in HOOK_CONFIG_SCHEMA:
            raise ConfigError(f"{source}: unknown key {key!r} (known: {', '.join(HOOK_CONFIG_SCHEMA)})")
        typ = HOOK_CONFIG_SCHEMA[key][0]
        if typ is int and isinstance(value, bool) or not isinstance(value, typ):
            raise ConfigError(f"{source}: {key} must be a {typ.__name__}, not {value!r}")
        if typ is list and not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: {key} must be a list of strings")
        setattr(cfg, key, value)
    _check_resources(cfg.resources, source)
    if cfg.on_reject not in ON_REJECT:
        raise ConfigError(f"{source}: on_reject must be one of {', '.join(ON_REJECT)}, "
                          f"not {cfg.on_reject!r}")
    if not os.path.isabs(cfg.hpccont):
        raise ConfigError(f"{source}: hpccont must be an absolute path, not {cfg.hpccont!r}")
    return cfg


def _check_resources(resources: Dict[str, str], source: str) -> None:
    from .common import OPTION_TABLE
    for res, opt in resources.items():
        if not isinstance(opt, str) or opt not in OPTION_TABLE:
            raise ConfigError(f"{source}: resources.{res} names unknown option {opt!r}")
    if "container" not in resources.values():
        raise ConfigError(f"{source}: resources must map some resource to 'container'")


def load_hook_config(path: Optional[str]) -> HookConfig:
    """``pbs.hook_config_filename`` -> HookConfig (None: no config imported, defaults)."""
    if not path:
        return HookConfig()
    try:
        with open(path) as f:
            raw = json.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read hook config {path}: {e.strerror}")
    except ValueError as e:
        raise ConfigError(f"hook config {path}: not valid JSON ({e})")
    return parse_hook_config(raw, f"hook config {path}")


def load_site_config(hook_cfg: HookConfig, environ: Mapping[str, str] = os.environ) -> dict:
    from .. import config
    env = dict(environ)
    if hook_cfg.site_config:
        env["HPCCONT_CONFIG"] = hook_cfg.site_config
    return config.load(env)


# ---------------------------------------------------------------- what the job asked for

def _resource_value(option: str, value: Any) -> Optional[str]:
    # PBS hands boolean resources to hooks as Python booleans, strings as str.
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if option in LIST_OPTIONS:
        text = text.replace(RESOURCE_LIST_SEPARATOR, ",")
    return text


def options_from_resources(resources: Mapping[str, Any], table: Mapping[str, str]
                           ) -> Dict[str, Optional[str]]:
    found: Dict[str, Optional[str]] = {}
    for res, option in table.items():
        value = resources.get(res)
        if value is not None:
            found[option] = _resource_value(option, value)
    return found


def raw_options(ctx: JobContext, hook_cfg: HookConfig, *, task_env: bool) -> Dict[str, Optional[str]]:
    """Option values, later sources winning: Variable_List < task env < custom resources.

    Resources win because they are what the server, the scheduler and accounting saw.  The
    task environment only exists in execjob_launch: a TM task inherits it from the process
    that spawned it.
    """
    merged = options_from_env(ctx.variables)
    if task_env and ctx.env is not None:
        merged.update(options_from_env(ctx.env))
    merged.update(options_from_resources(ctx.resources, hook_cfg.resources))
    return merged


def job_options(ctx: JobContext, hook_cfg: HookConfig, *, task_env: bool = False) -> JobOptions:
    return parse_options(raw_options(ctx, hook_cfg, task_env=task_env))


def submit_dir(ctx: JobContext) -> str:
    # qsub records its working directory as PBS_O_WORKDIR; relative image names start there.
    env = ctx.env or {}
    return ctx.variables.get("PBS_O_WORKDIR") or env.get("PBS_O_WORKDIR") or "/"


def join_key(job_id: str) -> str:
    return "pbs-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in job_id)


# ---------------------------------------------------------------- site policy

def check_binds(opts: JobOptions, site: dict) -> None:
    mounts = site.get("mounts", {})
    if opts.binds and not mounts.get("user_binds", True):
        raise PolicyError("this site does not allow user bind mounts (container-bind)")
    deny = mounts.get("user_bind_denylist", [])
    for spec in opts.binds:
        src = spec.split(":", 1)[0]
        if not os.path.isabs(src):
            raise UsageError(f"container-bind source must be an absolute path: {spec!r}")
        if deny and under_any(src, deny):
            raise PolicyError(f"container-bind {src!r} is on the site's deny list")


def _default_verify(image: str, hook_cfg: HookConfig, site: dict) -> None:
    """Signature verification through ``hpccont verify`` (the signing sub-command).

    Called only when the site requires signatures.  Going through the command keeps this
    module independent of how signatures are implemented, and the keyring is the site's.
    """
    argv = list(hook_cfg.verify_command) or [hook_cfg.hpccont, "verify"]
    env = dict(os.environ)
    if hook_cfg.site_config:
        env["HPCCONT_CONFIG"] = hook_cfg.site_config
    try:
        r = subprocess.run(argv + [image], capture_output=True, text=True, timeout=60, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SignatureError(f"cannot verify the signature of {image}: {e}")
    if r.returncode != 0:
        detail = (r.stderr.strip().splitlines() or ["verification failed"])[-1]
        raise SignatureError(f"signature check failed for {image}: {detail}")


# Pluggable: the signature check used when ``signatures.require`` is set.
VERIFY: List[Callable[[str, HookConfig, dict], None]] = [_default_verify]

# image kind -> site config key in ``images`` that allows it


def check_image(image: str, hook_cfg: HookConfig, site: dict, *, verify: bool = True) -> str:
    """Site policy for an already resolved image path.  Returns the image kind."""
    from ..image.source import open_image
    from ..runtime.policy import check_image as site_policy
    kind = open_image(image).kind
    site_policy(image, kind, site.get("images", {}))
    if verify and site.get("signatures", {}).get("require", False):
        if kind != "sif":
            raise SignatureError(f"container image {image}: this site requires signed SIF images, "
                                 f"and a {kind} image cannot be signed")
        for check in VERIFY:
            check(image, hook_cfg, site)
    return kind


def begin_check(ctx: JobContext, hook_cfg: HookConfig, site: dict) -> Optional[str]:
    """execjob_begin: the job's image, resolved and allowed; None when no container was asked.

    Raises an HpccontError whose message is what the job is rejected with.
    """
    opts = job_options(ctx, hook_cfg)
    if not opts.wanted:
        return None
    image = resolve_image(opts.image or "", submit_dir(ctx), site.get("images", {}).get("image_dirs", []))
    check_binds(opts, site)
    check_image(image, hook_cfg, site)
    return image


# ---------------------------------------------------------------- execjob_launch

def already_wrapped(program: List[str]) -> bool:
    """True when the task is itself a container launch (never wrap twice)."""
    if not program:
        return False
    name = os.path.basename(program[0].lstrip("-"))
    if name not in LAUNCHERS:
        return False
    subcommands = LAUNCHERS[name]
    if subcommands is None:
        return True
    return any(a in subcommands for a in program[1:] if not a.startswith("-"))


def task_program(progname: str, argv: List[str]) -> List[str]:
    """The command line the task would have run: ``progname`` with ``argv[1:]``.

    ``argv[0]`` is only a name; MoM's ``-bash`` (login shell) becomes ``bash -l``.
    """
    program = [progname] + list(argv[1:])
    if argv and argv[0].startswith("-"):
        flag = LOGIN_FLAGS.get(os.path.basename(progname))
        if flag and flag not in program[1:2]:
            program.insert(1, flag)
    return program


def is_job_script(ctx: JobContext) -> bool:
    # The top shell runs only on the primary MoM and is task 1; TM tasks get later numbers.
    env = ctx.env or {}
    return ctx.primary and env.get("PBS_TASKNUM", "1") == "1"


def plan_launch(ctx: JobContext, hook_cfg: HookConfig, site: dict) -> LaunchDecision:
    """execjob_launch: what the task should become.  Raises HpccontError to reject."""
    progname = ctx.progname or ""
    argv = list(ctx.argv or [progname])
    opts = job_options(ctx, hook_cfg, task_env=True)
    if not opts.wanted:
        return LaunchDecision(False, "no container requested")
    if already_wrapped([progname] + argv[1:]) or already_wrapped(argv):
        return LaunchDecision(False, "task already starts a container")
    if os.path.basename(progname) in hook_cfg.never_wrap:
        return LaunchDecision(False, f"{os.path.basename(progname)} is in never_wrap")
    script = is_job_script(ctx)
    if script and not hook_cfg.wrap_job_script:
        return LaunchDecision(False, "job scripts are not wrapped (wrap_job_script)")
    if not script and not hook_cfg.wrap_tm_tasks:
        return LaunchDecision(False, "TM tasks are not wrapped (wrap_tm_tasks)")
    image_dirs = site.get("images", {}).get("image_dirs", [])
    image = resolve_image(opts.image or "", submit_dir(ctx), image_dirs)
    check_binds(opts, site)
    # execjob_begin verified the job-level image; a task that picked another image through
    # its environment gets the full check here.
    job_level = job_options(ctx, hook_cfg)
    checked = job_level.wanted and _same_image(job_level, image, ctx, image_dirs)
    check_image(image, hook_cfg, site, verify=not checked)
    opts.image = image
    env = ctx.env if ctx.env is not None else ctx.variables
    join = join_key(ctx.job_id) if hook_cfg.join else None
    new_argv = launch_argv(opts, task_program(progname, argv), hpccont=hook_cfg.hpccont,
                           environ=env, join=join)
    kind = "job script" if script else "TM task"
    return LaunchDecision(True, f"{kind} wrapped in {image}", progname=hook_cfg.hpccont,
                          argv=new_argv, env_set={JOB_MARKER: ctx.job_id}, image=image)


def _same_image(job_level: JobOptions, image: str, ctx: JobContext, image_dirs: List[str]) -> bool:
    try:
        return resolve_image(job_level.image or "", submit_dir(ctx), image_dirs) == image
    except HpccontError:
        return False


# ---------------------------------------------------------------- execjob_end

def _environ_has(pid: str, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


def leftover_pids(job_id: str, proc: str = "/proc") -> List[int]:
    marker = f"{JOB_MARKER}={job_id}".encode()
    me = os.getpid()
    return sorted(int(p) for p in os.listdir(proc)
                  if p.isdigit() and int(p) != me and _environ_has(p, marker))


def _unescape_mountinfo(field_text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal (\040...)
    out, i = [], 0
    while i < len(field_text):
        if field_text[i] == "\\" and field_text[i + 1:i + 4].isdigit():
            out.append(chr(int(field_text[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field_text[i])
            i += 1
    return "".join(out)


def leftover_mounts(key: str, mountinfo: str = "/proc/self/mountinfo") -> List[str]:
    try:
        with open(mountinfo) as f:
            points = [_unescape_mountinfo(line.split()[4]) for line in f]
    except OSError:
        return []
    found = [p for p in points if any(part == key or part.startswith(key + ".")
                                      for part in p.split("/"))]
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def leftover_paths(key: str, site: dict, extra_dirs: List[str] = ()) -> List[str]:
    dirs = [site.get("runtime", {}).get("state_dir", "/run/hpccont"), *extra_dirs]
    found = []
    for d in dirs:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        found += [os.path.join(d, n) for n in names if n == key or n.startswith(key + ".")]
    return sorted(found)


def join_state_files(key: str, images: List[str], site: dict, uid: Optional[int]) -> List[str]:
    """State files ``--join KEY`` leaves for IMAGE, named as the runtime names them."""
    from types import SimpleNamespace
    from ..runtime.join import state_name
    dirs = [site.get("runtime", {}).get("state_dir", "/run/hpccont")]
    if uid is not None:
        # where the runtime keeps a non-root user's state
        dirs += [f"/run/user/{uid}/hpccont-{uid}", f"/tmp/hpccont-{uid}"]
    names = [state_name(SimpleNamespace(join=key, image=SimpleNamespace(path=i))) for i in images]
    return [os.path.join(d, n) for d in dirs for n in names if os.path.lexists(os.path.join(d, n))]


def plan_cleanup(job_id: str, site: dict, extra_dirs: List[str] = (), images: List[str] = (),
                 uid: Optional[int] = None) -> CleanupPlan:
    key = join_key(job_id)
    paths = leftover_paths(key, site, extra_dirs) + join_state_files(key, list(images), site, uid)
    return CleanupPlan(job_id=job_id, key=key, pids=leftover_pids(job_id),
                       mounts=leftover_mounts(key), paths=paths)


def job_images(ctx: JobContext, hook_cfg: HookConfig, site: dict) -> List[str]:
    """The job-level image, resolved, or [] (execjob_end must not fail on a bad request)."""
    try:
        opts = job_options(ctx, hook_cfg)
        if not opts.wanted:
            return []
        return [resolve_image(opts.image or "", submit_dir(ctx),
                              site.get("images", {}).get("image_dirs", []))]
    except HpccontError:
        return []


def _wait_gone(pids: List[int], seconds: float) -> List[int]:
    # A zombie still answers kill(0); the state letter in /proc/PID/stat tells it is gone.
    deadline = time.monotonic() + seconds
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _running(p)]
        if alive:
            time.sleep(0.05)
    return alive


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def apply_cleanup(plan: CleanupPlan, grace: float = 5) -> List[str]:
    """Kill, unmount and remove what the plan lists.  Returns what could not be done."""
    import shutil
    problems: List[str] = []
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2)):
        for pid in plan.pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
            except OSError as e:
                problems.append(f"kill {pid}: {e.strerror}")
        plan.pids = _wait_gone(plan.pids, wait)
        if not plan.pids:
            break
    problems += [f"process {p} survived SIGKILL" for p in plan.pids]
    for point in plan.mounts:
        from ..runtime import kernel
        try:
            # Detach: a leftover mount may still be busy; the kernel frees it when unused.
            kernel.umount2(point, kernel.MNT_DETACH)
        except OSError as e:
            problems.append(f"umount {point}: {e.strerror}")
    for path in plan.paths:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except OSError as e:
            problems.append(f"remove {path}: {e.strerror}")
    return problems

