"""What every scheduler adapter shares: job container options -> the command that wraps a task.

Slurm (SPANK plugin) and PBS (execjob_launch hook) both collect the same option set from the
user; Slurm's tasks turn it into a request with ``job_request``, PBS hands its hook a command
line made by ``launch_argv`` (a hook can only give PBS a program and its arguments).  Keeping the decision here means both schedulers behave the same.

Option names are the Slurm spellings without the leading dashes; each also has an environment
variable (``HPCCONT_CONTAINER``, ``HPCCONT_CONTAINER_BIND``...) read by ``options_from_env``.
"""
from __future__ import annotations

import os
TYPE_CHECKING = False   # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Dict, List, Mapping, Optional, Tuple

from ..config import yes_no  # noqa: F401 (the schedulers' spelling is the config's)
from ..errors import ImageError, UsageError
# Image references a registry serves: pulled into the cache, then run as SIFs.
from ..image.registry import is_reference as is_registry_ref
from ..record import factory, record

# option name -> (JobOptions attribute, takes a value)
OPTION_TABLE = {
    "container": ("image", True),
    "container-bind": ("binds", True),
    "container-env": ("env_names", True),
    "container-workdir": ("workdir", True),
    "container-writable-tmpfs": ("writable_tmpfs", False),
    "container-nv": ("nv", False),
    "container-mpi": ("mpi", True),
    "container-cleanenv": ("cleanenv", False),
    "container-mount-home": ("mount_home", False),
    "no-container-mount-home": ("no_mount_home", False),
}

NO_CONTAINER = ("none", "no")
IMAGE_SUFFIXES = (".sif", ".sqsh", ".squashfs", ".sqfs", ".img")
MPI_MODES = ("hybrid", "bind")


def env_name(option: str) -> str:
    """``container-bind`` -> ``HPCCONT_CONTAINER_BIND``."""
    return "HPCCONT_" + option.upper().replace("-", "_")


@record
class JobOptions:
    image: Optional[str] = None
    binds: List[str] = factory(list)
    env_names: List[str] = factory(list)
    workdir: Optional[str] = None
    writable_tmpfs: bool = False
    nv: bool = False
    mpi: Optional[str] = None
    cleanenv: bool = False
    mount_home: bool = True

    @property
    def wanted(self) -> bool:
        return self.image is not None and self.image.lower() not in NO_CONTAINER


# A program that already is a container launch is never wrapped again: basename -> the
# sub-commands that start a container (None: the program itself does).
LAUNCHERS: Dict[str, Optional[Tuple[str, ...]]] = {
    "hpccont": ("exec", "run", "shell", "test", "instance"),
    "container-exec": None,
    "run-singularity": None,
    "apptainer": ("exec", "run", "shell", "test", "instance"),
    "singularity": ("exec", "run", "shell", "test", "instance"),
}


def starts_own_container(program: List[str]) -> bool:
    """True when ``program`` is itself a container launch (``hpccont exec ...``, an image run
    as ``run-singularity``...): wrapping it would nest two containers."""
    if not program:
        return False
    name = os.path.basename(program[0].lstrip("-"))
    if name not in LAUNCHERS:
        return False
    subcommands = LAUNCHERS[name]
    return subcommands is None or any(a in subcommands for a in program[1:]
                                      if not a.startswith("-"))


# Flags that say opposite things: given together, neither wins silently.
CONFLICTS = (("container-mount-home", "no-container-mount-home"),)


def _items(name: str, value: str) -> List[str]:
    """A comma list; an empty item (``FOO,``, ``a,,b``) is a typo or an unset variable."""
    items = value.split(",")
    if any(not i.strip() for i in items):
        raise UsageError(f"--{name}: empty item in {value!r}")
    return items


def parse_options(values: Mapping[str, Optional[str]]) -> JobOptions:
    """Options as collected by a scheduler front end: ``{"container": "img.sif", "container-nv": None}``.

    A flag option's value may be None (given without value) or a truth string.  Every bad value
    is refused with the option's name: a task must never run on the host because an option was
    mistyped (``--container=$IMG`` with IMG unset gives an empty image, not "no container").
    """
    opts = JobOptions()
    for a, b in CONFLICTS:
        if a in values and b in values:
            raise UsageError(f"--{a} and --{b} contradict each other")
    for name, value in values.items():
        if name not in OPTION_TABLE:
            raise UsageError(f"unknown container option --{name}")
        attr, takes_value = OPTION_TABLE[name]
        if takes_value:
            if value is None or not value.strip():
                what = " (use 'none' for no container)" if attr == "image" else ""
                raise UsageError(f"--{name} needs a value{what}")
            if attr == "binds":
                from ..runtime.mounts import parse_binds
                parse_binds(_items(name, value))       # refuse a bad spec here, by name
                opts.binds.extend(_items(name, value))
            elif attr == "env_names":
                for n in _items(name, value):
                    if not n.replace("_", "a").isalnum() or n[0].isdigit():
                        raise UsageError(f"--{name}: {n!r} is not a variable name")
                    opts.env_names.append(n)
            else:
                setattr(opts, attr, value)
        else:
            on = True if value is None else yes_no(value)
            if on is None:
                raise UsageError(f"--{name}: {value!r} is not yes or no")
            if attr == "no_mount_home":
                opts.mount_home = not on
            else:
                setattr(opts, attr, on)
    if opts.mpi is not None and opts.mpi not in MPI_MODES:
        raise UsageError(f"--container-mpi must be one of {', '.join(MPI_MODES)}, not {opts.mpi!r}")
    return opts


def options_from_env(environ: Mapping[str, str]) -> Dict[str, Optional[str]]:
    """The ``HPCCONT_CONTAINER*`` variables of a job environment as option values."""
    found: Dict[str, Optional[str]] = {}
    for name in OPTION_TABLE:
        var = env_name(name)
        if var in environ:
            found[name] = environ[var]
    return found


def resolve_image(image: str, submit_dir: str, image_dirs: List[str],
                  environ: Optional[Mapping[str, str]] = None) -> str:
    """Turn what the user typed into an absolute image path.

    A registry reference (``docker://``, ``oras://``) is pulled into the cache (once per image:
    every task, step and node of a job sharing the cache waits for the first pull) and its SIF
    path returned.  Absolute paths stay; relative paths that exist under the submit directory
    are taken from there; a bare name (``pytorch``) is looked up as ``NAME``, ``NAME.sif``... in
    the site's image directories.
    """
    if is_registry_ref(image):
        from ..image.registry import pull_to_cache
        return pull_to_cache(image, quiet=True,
                             environ=os.environ if environ is None else environ)
    if os.path.isabs(image):
        candidates = [image]
    else:
        candidates = [os.path.join(submit_dir, image)]
        if "/" not in image:
            for d in image_dirs:
                candidates.append(os.path.join(d, image))
                candidates += [os.path.join(d, image + s) for s in IMAGE_SUFFIXES]
    for c in candidates:
        if os.path.exists(c):
            return os.path.normpath(c)
    where = ", ".join([submit_dir] + list(image_dirs))
    raise ImageError(f"container image {image!r} not found (looked in {where})")


def job_request(opts: JobOptions, program: List[str], environ: Mapping[str, str], *,
                join: Optional[str] = None, scheduler_binds=()):
    """The ContainerRequest that runs ``program`` in the job's container (``opts.image``
    resolved to a path).  Variables named by ``--container-env`` carry the host's value, which
    wins over the image's, as in Pyxis.  ``HPCCONT_BIND`` of the job environment counts as
    the user's binds, as it does for ``hpccont exec``."""
    from ..runtime.mounts import parse_binds
    from ..runtime.request import ContainerRequest
    specs = ([environ["HPCCONT_BIND"]] if environ.get("HPCCONT_BIND") else []) + list(opts.binds)
    return ContainerRequest(
        image=opts.image or "", action="exec", argv=list(program), binds=parse_binds(specs),
        scheduler_binds=list(scheduler_binds),
        env={n: environ[n] for n in opts.env_names if n in environ},
        cleanenv=opts.cleanenv, mount_home=opts.mount_home, pwd=opts.workdir,
        writable_tmpfs=opts.writable_tmpfs, nv=opts.nv, mpi=opts.mpi, join=join)


def launch_argv(opts: JobOptions, program: List[str], *, hpccont: str = "hpccont",
                environ: Optional[Mapping[str, str]] = None, join: Optional[str] = None) -> List[str]:
    """The command that runs ``program`` inside the job's container.

    ``opts.image`` must already be resolved to a path.  ``environ`` supplies the values of the
    variables named by ``--container-env`` (passed with ``--env`` so they survive --cleanenv).
    """
    argv = [hpccont, "exec"]
    for b in opts.binds:
        argv += ["--bind", b]
    for name in opts.env_names:
        if environ is not None and name in environ:
            argv += ["--env", f"{name}={environ[name]}"]
    if opts.workdir:
        argv += ["--pwd", opts.workdir]
    if opts.writable_tmpfs:
        argv.append("--writable-tmpfs")
    if opts.nv:
        argv.append("--nv")
    if opts.mpi:
        argv += ["--mpi", opts.mpi]
    if opts.cleanenv:
        argv.append("--cleanenv")
    if not opts.mount_home:
        argv.append("--no-home")
    if join:
        argv += ["--join", join]
    # Option parsing stops at the image: everything after it is the program, untouched.
    argv.append(opts.image or "")
    return argv + list(program)
