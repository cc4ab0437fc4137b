"""What every scheduler adapter shares: job container options -> the command that wraps a task.

Slurm (SPANK plugin) and PBS (execjob_launch hook) both collect the same option set from the
user and call ``launch_argv``.  Keeping the decision here means both schedulers behave the same.

Option names are the Slurm spellings without the leading dashes; each also has an environment
variable (``HPCCONT_CONTAINER``, ``HPCCONT_CONTAINER_BIND``...) read by ``options_from_env``.
"""
from __future__ import annotations

import os
TYPE_CHECKING = False   # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Dict, List, Mapping, Optional

from ..errors import ImageError, UsageError
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

NO_CONTAINER = ("none", "no", "")
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


def _truthy(value: str) -> bool:
    return value.strip().lower() not in ("0", "no", "false", "off")


def parse_options(values: Mapping[str, Optional[str]]) -> JobOptions:
    """Options as collected by a scheduler front end: ``{"container": "img.sif", "container-nv": None}``.

    A flag option's value may be None (given without value) or a truth string.
    """
    opts = JobOptions()
    for name, value in values.items():
        if name not in OPTION_TABLE:
            raise UsageError(f"unknown container option --{name}")
        attr, takes_value = OPTION_TABLE[name]
        if takes_value:
            if value is None or (value == "" and attr != "image"):
                raise UsageError(f"--{name} needs a value")
            if attr in ("binds", "env_names"):
                getattr(opts, attr).extend(v for v in value.split(",") if v)
            else:
                setattr(opts, attr, value)
        else:
            on = True if value is None else _truthy(value)
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


def resolve_image(image: str, submit_dir: str, image_dirs: List[str]) -> str:
    """Turn what the user typed into an absolute image path.

    Absolute paths stay; relative paths that exist under the submit directory are taken from
    there; a bare name (``pytorch``) is looked up as ``NAME``, ``NAME.sif``... in the site's
    image directories.
    """
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
