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
- Hooks run as root (``user=pbsadmin``) on the execution hosts.  Everything a job names is
  the user's to choose (the image, bind sources, its environment), and every user is assumed
  hostile: paths the user names are opened as the user (``privsep``), the only program run as
  root (the signature check) gets a fixed environment and absolute paths, and job-end cleanup
  never follows a path the user can change (``runtime.cleanup``).  docs/security.md lists
  each piece.
"""
import json
import os
import stat
import subprocess
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ..errors import (ConfigError, HpccontError, ImageError, PolicyError, PrivsepError,
                      SignatureError, UsageError)
from ..runtime.policy import under_any
from ..runtime import cleanup
from ..runtime.mounts import parse_binds
from .common import (JobOptions, is_registry_ref, launch_argv, options_from_env, parse_options,
                     resolve_image, starts_own_container)

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
    # job.euser / job.egroup: whose rights the paths the job names are opened with.
    # user None: the calling process's own rights (tests, ``hpccont pbs launch-command``).
    user: Optional[str] = None
    group: Optional[str] = None


@dataclass(frozen=True)
class Credentials:
    uid: int
    gid: int
    groups: Tuple[int, ...] = ()


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
    uid: Optional[int] = None                                  # the job's user (None: unknown)
    gid: Optional[int] = None
    groups: Tuple[int, ...] = ()


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
    # Run as root: never looked up in a PATH.
    if cfg.verify_command and not os.path.isabs(cfg.verify_command[0]):
        raise ConfigError(f"{source}: verify_command must start with an absolute path, "
                          f"not {cfg.verify_command[0]!r}")
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


def site_config_path(hook_cfg: HookConfig) -> str:
    """The hook's site config: ``site_config`` or the default path, never the environment's
    HPCCONT_CONFIG (the hook's environment is not trusted to choose the site's policy)."""
    from .. import config
    return hook_cfg.site_config or config.DEFAULT_PATH


def load_site_config(hook_cfg: HookConfig) -> dict:
    from .. import config
    # No cache: the per-user cache lives under $HOME / $XDG_CACHE_HOME, which root must
    # neither trust nor write into.
    return config.load({"HPCCONT_CONFIG": site_config_path(hook_cfg)}, use_cache=False)


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


# ---------------------------------------------------------------- the job's user

def job_credentials(ctx: JobContext) -> Optional[Credentials]:
    """The uid, gid and groups of the job's user (None: ``ctx.user`` is None, own rights)."""
    if ctx.user is None:
        return None
    import grp
    import pwd
    if not ctx.user:
        raise ConfigError("the job has no execution user (euser); its paths cannot be "
                          "opened with the user's rights")
    try:
        pw = pwd.getpwnam(ctx.user)
    except KeyError:
        raise ConfigError(f"job user {ctx.user!r} is unknown on this host") from None
    gid = pw.pw_gid
    if ctx.group:
        try:
            gid = grp.getgrnam(ctx.group).gr_gid
        except KeyError:
            raise ConfigError(f"job group {ctx.group!r} is unknown on this host") from None
    return Credentials(pw.pw_uid, gid, tuple(os.getgrouplist(pw.pw_name, gid)))


def credentials_for_uid(uid: Optional[int]) -> Optional[Credentials]:
    if uid is None:
        return None
    import pwd
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return Credentials(uid, uid, ())
    return Credentials(uid, pw.pw_gid, tuple(os.getgrouplist(pw.pw_name, pw.pw_gid)))


def with_user_rights(creds: Optional[Credentials], work: Callable[[], Tuple[str, List[int]]],
                     error: type = ImageError) -> Tuple[str, List[int]]:
    """Run ``work`` (returning text and descriptors) with the job user's rights: in a child
    that has become the user when this process is root and the user is not, else here (the
    process already has no more rights than the user, or the job is root's).  The child's
    one-line error is raised here as ``error``."""
    if creds is None or os.geteuid() != 0 or creds.uid == 0:
        return work()
    from ..privsep import run_as_user
    try:
        return run_as_user(work, creds.uid, creds.gid, creds.groups)
    except PrivsepError as e:
        raise error(e.one_line()) from None


@dataclass
class OpenedImage:
    """The job's image, opened with the user's rights; root reads only through ``fd``."""
    path: str                   # resolved from the request: what the launch command names
    real: str                   # where the open file is, as the kernel says (/proc/self/fd)
    fd: int
    bind_sources: List[str] = field(default_factory=list)     # resolved by the user

    @property
    def fd_path(self) -> str:
        return f"/proc/self/fd/{self.fd}"

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _open_image_here(path: str) -> int:
    """Open an image path with this process's rights (in the user's child)."""
    from ..privsep import open_checked
    try:
        fd, _ = open_checked(path, "any")
    except PrivsepError as e:
        raise ImageError(f"container image {e.one_line()}") from None
    if stat.S_ISDIR(os.fstat(fd).st_mode) and not os.access(f"/proc/self/fd/{fd}",
                                                            os.R_OK | os.X_OK):
        os.close(fd)
        raise ImageError(f"container image {path}: Permission denied")
    return fd


def open_job_image(request: str, submit: str, image_dirs: List[str], binds: List[str] = (),
                   creds: Optional[Credentials] = None) -> OpenedImage:
    """Resolve the image request and open it, and resolve the bind sources, all as the job's
    user: a file the user cannot read is never read for them, a FIFO or device is refused
    without blocking, a symlink is followed with the user's rights only."""
    sources = [b.src for b in parse_binds(list(binds))]
    if is_registry_ref(request):
        return _registry_image(request, sources, creds)

    def work():
        try:
            path = resolve_image(request, submit, image_dirs)
        except ImageError:
            # "not found" for the user may be "not allowed to look": say which (for a path;
            # a bare name may be meant for the image directories)
            if "/" not in request:
                raise
            direct = os.path.join(submit, request)
            try:
                os.stat(direct)
            except PermissionError:
                raise ImageError(f"container image {direct}: Permission denied") from None
            except (OSError, ValueError):
                pass
            raise
        reals = [os.path.realpath(s) if os.path.isabs(s) else s for s in sources]
        return "\0".join([path, *reals]), [_open_image_here(path)]
    text, fds = with_user_rights(creds, work)
    path, *reals = text.split("\0")
    img = OpenedImage(path=path, real="", fd=fds[0], bind_sources=reals)
    for extra in fds[1:]:
        os.close(extra)
    try:
        st = os.fstat(img.fd)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise ImageError(f"container image {path}: not a regular file or a directory")
        img.real = os.readlink(img.fd_path)
        if not img.real.startswith("/") or img.real.endswith(" (deleted)"):
            raise ImageError(f"container image {path} was removed while it was checked")
    except BaseException:
        img.close()
        raise
    return img


def _registry_image(ref: str, sources: List[str], creds: Optional[Credentials]) -> OpenedImage:
    """A ``docker://``/``oras://`` job image: nothing to open here.  A hook must not pull (it
    runs as root, under MoM's alarm): the task's own ``hpccont exec REF`` pulls it as the user,
    into the user's cache, once per job (image/registry/pull.py pins the tag for the job)."""
    from ..image.registry import reference
    reference.parse(ref)                    # a bad reference is refused before the job starts
    text, _ = with_user_rights(creds, lambda: ("\0".join(
        os.path.realpath(s) if os.path.isabs(s) else s for s in sources), []))
    return OpenedImage(path=ref, real="", fd=-1, bind_sources=text.split("\0") if text else [])


def registry_policy(img: OpenedImage, site: dict) -> None:
    """The site's rules for a registry image, checked before the job starts: the allowed
    registries, no allowed_dirs (a pulled image lives in the user's
    cache), no required signatures (nothing is there to verify before the pull)."""
    from ..image.registry import reference
    from ..image.registry.pull import check_allowed
    images = site.get("images", {})
    if images.get("allowed_dirs"):
        raise PolicyError(f"container image {img.path}: this site allows images only from "
                          f"{', '.join(images['allowed_dirs'])}, not from a registry")
    if site.get("signatures", {}).get("require", False):
        raise SignatureError(f"container image {img.path}: this site requires signed SIF images; "
                             "pull it, check its signature and name the SIF instead")
    check_allowed(reference.parse(img.path), site.get("registry") or {})


# ---------------------------------------------------------------- site policy

def _under(real: str, dirs: List[str]) -> bool:
    """``real`` (already free of symlinks) inside one of the site's ``dirs``?  Unlike
    policy.under_any, the user's path is not resolved again here: it came from the kernel."""
    for d in dirs:
        top = os.path.realpath(d)
        if real == top or real.startswith(top.rstrip("/") + "/"):
            return True
    return False


def check_binds(opts: JobOptions, site: dict, real_sources: Optional[List[str]] = None) -> None:
    """``real_sources``: the bind sources as the job's user resolved them (open_job_image);
    None: resolved here, with this process's rights."""
    mounts = site.get("mounts", {})
    if opts.binds and not mounts.get("user_binds", True):
        raise PolicyError("this site does not allow user bind mounts (container-bind)")
    deny = mounts.get("user_bind_denylist", [])
    for i, spec in enumerate(opts.binds):
        if not os.path.isabs(spec.split(":", 1)[0]):
            raise UsageError(f"container-bind source must be an absolute path: {spec!r}")
        src = parse_binds([spec])[0].src
        if not deny:
            continue
        if real_sources is not None and i < len(real_sources):
            denied = _under(real_sources[i], deny)
        else:
            denied = under_any(src, deny)
        if denied:
            raise PolicyError(f"container-bind {src!r} is on the site's deny list")


def _is_python(program: str) -> bool:
    import re
    return re.fullmatch(r"python[0-9.]*", os.path.basename(program)) is not None


def _isolated(interpreter: str, args: List[str]) -> List[str]:
    """A Python interpreter with its arguments, ``-I`` added unless already there."""
    for a in args:                   # the interpreter's own options come first
        if not a.startswith("-") or a.startswith("--") or a == "-":
            break
        if "I" in a[1:] and a[1:].isalpha():
            return [interpreter, *args]
    return [interpreter, "-I", *args]


def root_command(argv: List[str]) -> List[str]:
    """``argv`` as root runs it: absolute program; a Python interpreter, or a script whose
    ``#!`` names one, run in isolated mode (-I: no PYTHON* variables, no user site, no script
    directory on sys.path), so that no environment, PYTHONPATH or sitecustomize chooses what
    root's Python imports."""
    from ..privsep import system_program
    program = argv[0]
    if not os.path.isabs(program):
        raise ConfigError(f"{program!r}: programs run as root need an absolute path")
    if _is_python(program):
        return _isolated(program, list(argv[1:]))
    try:
        with open(program, "rb") as f:
            first = f.readline(512)
    except OSError:
        return list(argv)            # the run itself reports it
    if not first.startswith(b"#!"):
        return list(argv)
    words = first[2:].decode("utf-8", "replace").strip().split(None, 1)
    if not words:
        return list(argv)
    interpreter, rest = words[0], (words[1:] or [""])[0]
    if os.path.basename(interpreter) == "env" and rest and not rest.startswith("-"):
        name, _, rest = rest.partition(" ")
        if not _is_python(name):
            return list(argv)
        interpreter = system_program(name)
    if not _is_python(interpreter):
        return list(argv)
    # the kernel passes what follows the interpreter as one argument
    return _isolated(interpreter, ([rest.strip()] if rest.strip() else []) + list(argv))


def root_environment(hook_cfg: HookConfig) -> Dict[str, str]:
    """The whole environment of a program the hook runs as root: fixed here, nothing of the
    job's or of the hook's own environment."""
    from ..privsep import ROOT_ENV
    env = dict(ROOT_ENV)
    env["HPCCONT_CONFIG"] = site_config_path(hook_cfg)
    return env


def _default_verify(image: str, hook_cfg: HookConfig, site: dict, fd: int) -> None:
    """Signature verification through ``hpccont verify`` (the signing sub-command).

    Called only when the site requires signatures.  Going through the command keeps this
    module independent of how signatures are implemented, and the keyring is the site's.
    The image is the descriptor opened as the user, passed as ``/proc/self/fd/N``: the
    verifier reads exactly the file that was checked, never the user's path.
    """
    argv = list(hook_cfg.verify_command) or [hook_cfg.hpccont, "verify"]
    fd_path = f"/proc/self/fd/{fd}"
    try:
        r = subprocess.run(root_command(argv) + [fd_path], capture_output=True, text=True,
                           timeout=60, env=root_environment(hook_cfg), cwd="/",
                           stdin=subprocess.DEVNULL, pass_fds=(fd,), close_fds=True)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SignatureError(f"cannot verify the signature of {image}: {e}")
    if r.returncode != 0:
        detail = (r.stderr.strip().splitlines() or ["verification failed"])[-1]
        raise SignatureError(f"signature check failed for {image}: "
                             f"{detail.replace(fd_path, image)}")


# Pluggable: the signature checks used when ``signatures.require`` is set, each called as
# check(image path, hook config, site config, descriptor of the opened image).
VERIFY: List[Callable[[str, HookConfig, dict, int], None]] = [_default_verify]


def image_kind(img: OpenedImage) -> str:
    """sif / squashfs / sandbox, read through the descriptor only."""
    from ..image import source
    try:
        return source.open_image(img.fd_path).kind
    except ImageError as e:
        raise type(e)(e.one_line().replace(img.fd_path, img.path)) from None


def _image_policy(img: OpenedImage, kind: str, images: dict) -> None:
    from ..runtime.policy import KIND_SWITCH
    allowed = images.get("allowed_dirs") or []
    if allowed and not _under(img.real, allowed):
        raise PolicyError(f"container image {img.path} is outside the allowed image directories "
                          f"({', '.join(allowed)})")
    switch = KIND_SWITCH.get(kind)
    if switch and not images.get(switch, True):
        raise PolicyError(f"container image {img.path}: {kind} images are not allowed at this site")


def check_opened_image(img: OpenedImage, hook_cfg: HookConfig, site: dict, *,
                       verify: bool = True) -> str:
    """Site policy for an image opened as the user.  Returns the image kind."""
    if img.fd < 0:
        registry_policy(img, site)
        return "sif"
    kind = image_kind(img)
    _image_policy(img, kind, site.get("images", {}))
    if verify and site.get("signatures", {}).get("require", False):
        if kind != "sif":
            raise SignatureError(f"container image {img.path}: this site requires signed SIF "
                                 f"images, and a {kind} image cannot be signed")
        for check in VERIFY:
            check(img.path, hook_cfg, site, img.fd)
    return kind


def check_image(image: str, hook_cfg: HookConfig, site: dict, *, verify: bool = True,
                creds: Optional[Credentials] = None) -> str:
    """Site policy for an already resolved image path, opened with ``creds``' rights (None:
    this process's).  Returns the image kind."""
    img = open_job_image(image, "/", [], creds=creds)
    try:
        return check_opened_image(img, hook_cfg, site, verify=verify)
    finally:
        img.close()


def begin_check(ctx: JobContext, hook_cfg: HookConfig, site: dict) -> Optional[str]:
    """execjob_begin: the job's image, resolved and allowed; None when no container was asked.

    Raises an HpccontError whose message is what the job is rejected with.
    """
    opts = job_options(ctx, hook_cfg)
    if not opts.wanted:
        return None
    img = open_job_image(opts.image or "", submit_dir(ctx),
                         site.get("images", {}).get("image_dirs", []), opts.binds,
                         job_credentials(ctx))
    try:
        check_binds(opts, site, img.bind_sources)
        check_opened_image(img, hook_cfg, site)
    finally:
        img.close()
    return img.path


# ---------------------------------------------------------------- execjob_launch

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
    if starts_own_container([progname] + argv[1:]) or starts_own_container(argv):
        return LaunchDecision(False, "task already starts a container")
    if os.path.basename(progname) in hook_cfg.never_wrap:
        return LaunchDecision(False, f"{os.path.basename(progname)} is in never_wrap")
    script = is_job_script(ctx)
    if script and not hook_cfg.wrap_job_script:
        return LaunchDecision(False, "job scripts are not wrapped (wrap_job_script)")
    if not script and not hook_cfg.wrap_tm_tasks:
        return LaunchDecision(False, "TM tasks are not wrapped (wrap_tm_tasks)")
    image_dirs = site.get("images", {}).get("image_dirs", [])
    img = open_job_image(opts.image or "", submit_dir(ctx), image_dirs, opts.binds,
                         job_credentials(ctx))
    try:
        check_binds(opts, site, img.bind_sources)
        # execjob_begin verified the job-level image; a task that asked for another image
        # through its environment gets the full check here.
        job_level = job_options(ctx, hook_cfg)
        checked = job_level.wanted and (job_level.image or "") == (opts.image or "")
        check_opened_image(img, hook_cfg, site, verify=not checked)
    finally:
        img.close()
    image = opts.image = img.path
    env = ctx.env if ctx.env is not None else ctx.variables
    join = join_key(ctx.job_id) if hook_cfg.join else None
    new_argv = launch_argv(opts, task_program(progname, argv), hpccont=hook_cfg.hpccont,
                           environ=env, join=join)
    kind = "job script" if script else "TM task"
    return LaunchDecision(True, f"{kind} wrapped in {image}", progname=hook_cfg.hpccont,
                          argv=new_argv, env_set={JOB_MARKER: ctx.job_id}, image=image)


# ---------------------------------------------------------------- execjob_end

def leftover_pids(job_id: str, proc: str = "/proc", uid: Optional[int] = None) -> List[int]:
    return cleanup.marked_processes(f"{JOB_MARKER}={job_id}".encode(), uid, proc)


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


def _home_of(uid: int) -> Optional[str]:
    import pwd
    try:
        return pwd.getpwuid(uid).pw_dir
    except KeyError:
        return None


def join_state_files(key: str, images: List[str], site: dict, uid: Optional[int]) -> List[str]:
    """State files ``--join KEY`` leaves for IMAGE, named as the runtime names them."""
    from types import SimpleNamespace
    from ..runtime.join import state_name, user_state_dirs
    dirs = [site.get("runtime", {}).get("state_dir", "/run/hpccont")]
    if uid is not None:
        # where the runtime keeps a non-root user's state (its fallback directory too, named by
        # a token in the user's cache: read by a child that is the user, never by root)
        creds = credentials_for_uid(uid)
        try:
            text, _ = with_user_rights(creds, lambda: (
                "\n".join(user_state_dirs(uid, _home_of(uid))), []))
            dirs += [d for d in text.split("\n") if d]
        except HpccontError:
            dirs += user_state_dirs(uid, None)
    names = [state_name(SimpleNamespace(join=key, image=SimpleNamespace(path=i))) for i in images]
    return [os.path.join(d, n) for d in dirs for n in names if os.path.lexists(os.path.join(d, n))]


def plan_cleanup(job_id: str, site: dict, extra_dirs: List[str] = (), images: List[str] = (),
                 uid: Optional[int] = None) -> CleanupPlan:
    """``uid``: the job's user; only that user's marked processes are stopped, and removals
    outside root-only directories are done with that user's rights."""
    key = join_key(job_id)
    paths = leftover_paths(key, site, extra_dirs) + join_state_files(key, list(images), site, uid)
    creds = credentials_for_uid(uid)
    return CleanupPlan(job_id=job_id, key=key, pids=leftover_pids(job_id, uid=uid),
                       mounts=cleanup.mounts_named(key), paths=paths, uid=uid,
                       gid=creds.gid if creds else None, groups=creds.groups if creds else ())


def job_images(ctx: JobContext, hook_cfg: HookConfig, site: dict) -> List[str]:
    """The job-level image, resolved with the user's rights, or [] (execjob_end must not fail
    on a bad request)."""
    try:
        opts = job_options(ctx, hook_cfg)
        if not opts.wanted:
            return []
        dirs = site.get("images", {}).get("image_dirs", [])
        if is_registry_ref(opts.image or ""):
            # The SIF the job's tasks ran, from the user's cache without the network (the tag
            # as the job pinned it), found by a child that is the user.
            from ..image.registry import pull_to_cache
            env = dict(ctx.env if ctx.env is not None else ctx.variables or {},
                       PBS_JOBID=ctx.job_id)
            text, _ = with_user_rights(job_credentials(ctx), lambda: (pull_to_cache(
                opts.image or "", offline=True, environ=env), []))
            return [text]
        text, _ = with_user_rights(job_credentials(ctx),
                                   lambda: (resolve_image(opts.image or "", submit_dir(ctx), dirs), []))
        return [text]
    except HpccontError:
        return []


def apply_cleanup(plan: CleanupPlan, grace: float = 5) -> List[str]:
    """Kill, unmount and remove what the plan lists.  Returns what could not be done.

    The user may rearrange their own directories while their processes stop, so the mounts
    are listed again afterwards, and no path is used as a string: runtime.cleanup walks each
    one by descriptor, refusing symlinks and directories of other owners."""
    problems, plan.pids = cleanup.stop_processes(plan.pids, f"{JOB_MARKER}={plan.job_id}".encode(),
                                                 plan.uid, grace)
    owners = (0,) if plan.uid in (None, 0) else (0, plan.uid)
    for point in cleanup.mounts_named(plan.key):
        try:
            cleanup.detach(point, owners)
        except HpccontError as e:
            problems.append(f"umount {point}: {e.one_line()}")
        except OSError as e:
            problems.append(f"umount {point}: {os.strerror(e.errno) if e.errno else e}")
    problems += cleanup.remove_paths(plan.paths, plan.uid, plan.gid, plan.groups)
    return problems
