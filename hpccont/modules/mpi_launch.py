"""``image-mpi``: start every MPI rank inside the loaded module's image.

Hybrid model: the host launcher (mpirun, or srun inside a Slurm job) starts ``container-exec``
once per rank, which execs the command in the image.  Launcher options come before a ``--``,
the command after it; without ``--`` everything is the command.
"""
import os
import shlex
import shutil
from typing import List, Mapping, Tuple

from ..errors import CommandNotFound, UsageError

# Which launcher runs the ranks: first matching rule wins.  srun inside a job, because mpirun
# under Slurm would start ranks outside the job's step accounting on some sites.
LAUNCHER_RULES = (
    ("HPCCONT_MPI_LAUNCHER", None),      # the user's or site's explicit choice, e.g. "mpirun.mpich"
    ("SLURM_JOB_ID", ["srun"]),
    (None, ["mpirun"]),
)


def split_args(args: List[str]) -> Tuple[List[str], List[str]]:
    """``[launcher options] -- cmd args`` -> (launcher options, command)."""
    if "--" in args:
        i = args.index("--")
        return args[:i], args[i + 1:]
    return [], list(args)


def launcher(environ: Mapping[str, str]) -> List[str]:
    for var, argv in LAUNCHER_RULES:
        if var is None:
            return list(argv)
        value = environ.get(var)
        if value:
            return shlex.split(value) if argv is None else list(argv)
    raise AssertionError("LAUNCHER_RULES has no default")


def mpi_argv(args: List[str], image: str, container_exec: str, exec_options: List[str],
             environ: Mapping[str, str]) -> List[str]:
    opts, command = split_args(args)
    if not command:
        raise UsageError("usage: image-mpi [LAUNCHER-OPTIONS --] CMD [ARGS]")
    extra = shlex.split(environ.get("HPCCONT_MPI_ARGS", ""))
    return launcher(environ) + extra + opts + [container_exec, *exec_options, image, *command]


def exec_launcher(argv: List[str]) -> int:
    if not shutil.which(argv[0]):
        raise CommandNotFound(f"MPI launcher {argv[0]!r} not found on PATH "
                              "(set HPCCONT_MPI_LAUNCHER to choose another)")
    os.execvp(argv[0], argv)
    return 127  # not reached
