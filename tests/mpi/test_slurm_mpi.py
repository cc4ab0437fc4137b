"""MPI ranks started by ``srun`` on the real Slurm test cluster (tests/slurm/conftest.py).

Open MPI images under ``srun --mpi=pmix``, MPICH images under ``srun --mpi=pmi2``, through
``container-exec`` as the unprivileged test user; the crossed pairings are refused by the
hybrid check with one line per rank instead of starting singletons.
"""
import re
import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.mpi, pytest.mark.debootstrap, pytest.mark.slow,
              pytest.mark.rootless, pytest.mark.timeout(600)]

MPITEST = "/opt/mpitest/mpitest"
PLUGIN = {"openmpi": "pmix", "mpich": "pmi2"}


def _srun(submit, install, plugin, n, argv):
    env = {"PATH": f"{install['bin']}:/usr/local/bin:/usr/bin:/bin"}
    return submit("srun", f"--mpi={plugin}", "-n", str(n), "--overcommit", *map(str, argv),
                  env=env, timeout=300)


@pytest.mark.parametrize("family", ["openmpi", "mpich"])
def test_srun_allreduce_and_ring(slurm_cluster, submit, install, mpi_images, family):
    for what, expect in (("allreduce", "allreduce size=2 sum=3"), ("ring", "ring size=2 token=1")):
        r = _srun(submit, install, PLUGIN[family], 2,
                  ["container-exec", mpi_images[family], MPITEST, what])
        assert r.returncode == 0, r.stderr[-3000:]
        assert expect in r.stdout, r.stdout


@pytest.mark.parametrize("family", ["openmpi", "mpich"])
def test_srun_bind_mode_loads_host_library(slurm_cluster, submit, install, mpi_images, family):
    r = _srun(submit, install, PLUGIN[family], 2,
              ["container-exec", "--mpi", "bind", mpi_images[family], MPITEST, "maps"])
    assert r.returncode == 0, r.stderr[-3000:]
    paths = re.findall(r"maps rank=\d lib=(\S+)", r.stdout)
    assert len(paths) == 2 and all(p.startswith("/.hpccont/mpi/lib/") for p in paths), r.stdout


@pytest.mark.parametrize("family,plugin", [("openmpi", "pmi2"), ("mpich", "pmix")])
def test_srun_wrong_plugin_refused(slurm_cluster, submit, install, mpi_images, family, plugin):
    r = _srun(submit, install, plugin, 2, ["container-exec", mpi_images[family], MPITEST, "allreduce"])
    assert r.returncode != 0 and "allreduce" not in r.stdout
    assert f"--mpi={'pmix' if plugin == 'pmi2' else 'pmi2'}" in r.stderr, r.stderr
