"""Tests that run as MPI ranks themselves (pytest-mpi): started by test_launch.py as
``mpirun -np 2 python -m pytest --with-mpi tests/mpi/test_under_mpirun.py``.

Each rank computes what container-exec would decide from its real launcher environment, and
the ranks compare notes over MPI: every rank of a job on a node must derive the same join key.
"""
import os

import pytest

from hpccont.cli import container_exec
from hpccont.host import mpi


@pytest.mark.mpi(min_size=2)
def test_ranks_see_open_mpi_launcher_and_agree_on_join_key():
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    launcher = mpi.detect_launcher(os.environ)
    assert launcher is not None and launcher[0] == "openmpi"
    keys = comm.allgather(container_exec.join_key(os.environ, "/images/app.sif"))
    assert keys[0] is not None and len(set(keys)) == 1, keys
    other = dict(os.environ, OMPI_MCA_orte_hnp_uri="another-job", PMIX_NAMESPACE="another-job")
    assert container_exec.join_key(other, "/images/app.sif") != keys[0]
    assert container_exec.join_key(os.environ, "/images/other.sif") != keys[0]


@pytest.mark.mpi(min_size=2)
def test_rank_variables_are_forwarded():
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    env = container_exec.launcher_env(os.environ)
    assert env["OMPI_COMM_WORLD_RANK"] == str(comm.rank)
    assert env["OMPI_COMM_WORLD_SIZE"] == str(comm.size)
    argv = container_exec.exec_argv(["/images/app.sif", "./app"], os.environ, "hybrid")
    assert argv[-2:] == ["/images/app.sif", "./app"]
    assert f"OMPI_COMM_WORLD_RANK={comm.rank}" in argv
    assert argv[argv.index("--mpi") + 1] == "hybrid"
