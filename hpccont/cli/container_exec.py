"""``container-exec [OPTIONS] [IMAGE] CMD [ARGS]``: what a launcher starts for each MPI rank.

    mpirun -np 4 container-exec app.sif ./solver in.dat
    srun --mpi=pmix container-exec ./solver          # image from $HPCCONT_IMAGE (a module)

It becomes ``hpccont exec --mpi MODE --join KEY [OPTIONS] IMAGE CMD...`` in this same process
(no second interpreter, and the rank keeps the PID the launcher knows), so:

- the launcher's variables (PMI, PMIx, Open MPI, MPICH, Slurm) reach the rank unchanged, also
  with --cleanenv, and the descriptors they name (PMI_FD...) stay open across the exec;
- all ranks of one job on one node join one container (KEY derives from the launcher's job
  identity, the node and the image), so shared memory and CMA work between them;
- in hybrid mode the image's MPI is checked against the launcher first, so that a pairing that
  cannot connect fails with one line instead of N singletons.
"""
from __future__ import annotations

import os
TYPE_CHECKING = False   # as typing.TYPE_CHECKING, without importing typing at run time

if TYPE_CHECKING:
    from typing import Dict, List, Mapping, Optional, Tuple

from ..digest import text_sha256
from ..errors import UsageError

USAGE = "container-exec [OPTIONS] [IMAGE] COMMAND [ARGS...]  (IMAGE may come from $HPCCONT_IMAGE)"

# Variables a launcher gives each rank; passed with --env so that --cleanenv keeps them.
LAUNCHER_PREFIXES = ("OMPI_", "OPAL_", "ORTE_", "PRTE_", "PMIX_", "PMI_", "PMI2_", "HYDRA_", "HYDI_",
                     "MPI_LOCAL", "MPIR_", "MPICH_", "SLURM_", "I_MPI_", "MV2_")

# Variables holding descriptors the rank must inherit (PMI-1/2 wire protocol, hydra control).
FD_VARS = ("PMI_FD", "HYDI_CONTROL_FD", "PMI_CONTROL_FD", "PMIX_SERVER_FD")

# Job identity, first complete match wins.  Each is the same for every rank of one job step and
# differs between concurrent steps; hydra gives none, so its ranks are grouped by their parent
# (one hydra_pmi_proxy per node and job) together with the parent's start time (PIDs recycle).
JOB_IDENTITY: List[Tuple[str, ...]] = [
    ("SLURM_JOB_ID", "SLURM_STEP_ID"),
    ("PMIX_NAMESPACE",),
    ("OMPI_MCA_orte_hnp_uri",),
    ("OMPI_MCA_ess_base_jobid",),
    ("PBS_JOBID", "PMI_RANK"),
    ("PMI_KVSNAME",),
]


def _image_magic(path: str) -> bool:
    """An image file (squashfs or SIF) or directory, as opposed to a program."""
    if os.path.isdir(path):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(128)
    except OSError:
        return False
    from ..image.sif import looks_like_sif
    from ..image.source import SQUASHFS_MAGIC
    return head[:4] == SQUASHFS_MAGIC or looks_like_sif(head)


def split_argv(argv: List[str], environ: Mapping[str, str]) -> Tuple[List[str], str, List[str]]:
    """(exec options, image, command).  Options are ``hpccont exec``'s and come first."""
    from .launch import OPTIONS
    opts: List[str] = []
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if arg in ("-h", "--help"):
            raise UsageError(f"usage: {USAGE}")
        name, eq, _ = arg.partition("=")
        if name not in OPTIONS:
            raise UsageError(f"unknown option {name} (usage: {USAGE})")
        opts.append(arg)
        if OPTIONS[name][1] != "flag" and not eq:
            if i + 1 >= len(argv):
                raise UsageError(f"option {name} needs a value")
            opts.append(argv[i + 1])
            i += 1
        i += 1
    rest = argv[i:]
    default = environ.get("HPCCONT_IMAGE", "")
    if rest and (not default or _image_magic(rest[0])):
        image, command = rest[0], rest[1:]
    elif default:
        image, command = default, rest
    else:
        raise UsageError(f"missing image and command (usage: {USAGE})")
    if not command:
        raise UsageError(f"missing command to run in {image} (usage: {USAGE})")
    return opts, image, command


def job_identity(environ: Mapping[str, str]) -> Optional[str]:
    for names in JOB_IDENTITY:
        if all(environ.get(n) for n in names):
            return "|".join(f"{n}={environ[n]}" for n in names)
    if any(v in environ for v in ("PMI_RANK", "PMI_FD", "HYDI_CONTROL_FD")):
        ppid = os.getppid()
        from ..runtime.join import start_time_or_none
        return f"parent={ppid}@{start_time_or_none(ppid) or '0'}"
    return None


def join_key(environ: Mapping[str, str], image: str) -> Optional[str]:
    """Same for all ranks of one job on one node using one image; None outside a launcher."""
    ident = job_identity(environ)
    if ident is None:
        return None
    raw = f"{ident}|{os.uname().nodename}|{os.path.realpath(image)}|{os.getuid()}"
    return "mpi-" + text_sha256(raw)[:20]


def launcher_env(environ: Mapping[str, str]) -> Dict[str, str]:
    return {k: v for k, v in environ.items() if k.startswith(LAUNCHER_PREFIXES)}


def keep_fds_open(environ: Mapping[str, str]) -> List[int]:
    """Descriptors named by the launcher must survive our exec (and the container's)."""
    kept = []
    for var in FD_VARS:
        value = environ.get(var, "")
        if value.isdigit():
            try:
                os.set_inheritable(int(value), True)
                kept.append(int(value))
            except OSError:
                pass  # not open here: the launcher did not pass it to this rank
    return kept


def _mode(opts: List[str], environ: Mapping[str, str]) -> Tuple[List[str], Optional[str]]:
    """(opts with --mpi MODE, mode); an explicit --mpi wins over HPCCONT_CONTAINER_MPI."""
    for i, o in enumerate(opts):
        if o == "--mpi":
            return opts, opts[i + 1]
        if o.startswith("--mpi="):
            return opts, o.partition("=")[2]
    mode = environ.get("HPCCONT_CONTAINER_MPI") or None
    return (opts + ["--mpi", mode] if mode else opts), mode


def hybrid_precheck(image: str, environ: Mapping[str, str]) -> None:
    """Refuse (HostError) a container MPI that cannot talk to this launcher."""
    from ..host import mpi
    from ..image.source import open_image
    source = open_image(image)
    found = mpi.discover_container(mpi.list_image(source), versions=False)
    verdict = mpi.hybrid_check(found[0] if found else None, environ)
    if verdict.level == "refuse":
        from ..errors import HostError
        raise HostError(f"--mpi hybrid: {verdict.reason}")


def exec_argv(argv: List[str], environ: Mapping[str, str], default_mode: str) -> List[str]:
    """The ``hpccont exec`` arguments for this rank."""
    opts, image, command = split_argv(argv, environ)
    opts, mode = _mode(opts, environ)
    mode = mode or default_mode
    if "--mpi" not in opts and not any(o.startswith("--mpi=") for o in opts):
        opts += ["--mpi", mode]
    if not any(o == "--join" or o.startswith("--join=") for o in opts):
        key = join_key(environ, image)
        if key:
            opts += ["--join", key]
    for k, v in sorted(launcher_env(environ).items()):
        if "," not in v:    # --env splits comma lists; such values pass with the environment
            opts += ["--env", f"{k}={v}"]
    return opts + [image] + command


def main(name: str, argv: list) -> int:
    from .. import config
    from . import launch
    cfg = config.load()
    args = exec_argv(list(argv), os.environ, cfg["mpi"]["default_mode"])
    mode = args[args.index("--mpi") + 1] if "--mpi" in args else None
    keep_fds_open(os.environ)
    if mode == "hybrid" and os.environ.get("HPCCONT_MPI_NOCHECK") not in ("1", "yes"):
        _opts, image, _cmd = split_argv(list(argv), os.environ)
        hybrid_precheck(image, os.environ)
    return launch.main("exec", args)
