"""MPI across the three-node Slurm cluster of network namespaces (tests/slurm/multinode.py).

Ranks on different nodes talk over TCP on the cluster's private subnet; Open MPI under
``srun --mpi=pmix``, MPICH under ``srun --mpi=pmi2``, one rank per node.  Each case runs the
allreduce and a ring of 1 MiB messages, in hybrid mode (the image's MPI) and bind mode (the
host's MPI bound in), through the plugin (``--container=IMG``) and through ``container-exec``.
The same programs run bare first, so that a failure here is the container's.  Everything the
nodes need (images, programs, hpccont) is outside /tmp, which is each node's own.
"""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.multinode, pytest.mark.mpi, pytest.mark.debootstrap,
              pytest.mark.slow, pytest.mark.rootless, pytest.mark.timeout(900)]

MPITEST = "/opt/mpitest/mpitest"
SOURCE = Path(__file__).resolve().parent / "mpitest.c"
COMPILERS = {"openmpi": "mpicc", "mpich": "mpicc.mpich"}
CHECKS = (("allreduce", "allreduce size={n} sum={sum}"),
          ("bigring", "bigring size={n} bytes=1048576 ok=1"))
# family -> (srun --mpi, srun layout): one rank per node.  Open MPI 4.1.4's TCP BTL itself
# crashes now and then (about one -N3 -n6 allreduce in 20, bare, "connect() ... failed:
# Operation now in progress" and a SIGSEGV) with two ranks per node.
LAYOUT = {"openmpi": ("pmix", ["-N3", "-n3"]), "mpich": ("pmi2", ["-N3", "-n3"])}


@pytest.fixture(scope="session")
def site_mpitest(site_root):
    """mpitest built on the host for each MPI, outside /tmp (the nodes' /tmp is their own)."""
    if not all(shutil.which(cc) for cc in COMPILERS.values()):
        pytest.skip("needs Debian's Open MPI and MPICH")
    d = site_root / "mpitest"
    d.mkdir(mode=0o755, exist_ok=True)
    out = {}
    for name, cc in COMPILERS.items():
        out[name] = d / f"mpitest-{name}"
        subprocess.run([cc, "-O2", "-o", str(out[name]), str(SOURCE)], check=True)
        out[name].chmod(0o755)
    return out


def _env(cluster, site_install):
    return {"PATH": f"{site_install['bin']}:/usr/local/bin:/usr/bin:/bin",
            # Open MPI: between nodes only TCP on the cluster's own subnet.
            "OMPI_MCA_btl": "self,vader,tcp", "OMPI_MCA_btl_tcp_if_include": cluster.cidr,
            # MPICH's UCX sees one kernel (one boot id) and takes shared memory between the
            # namespace nodes; the containers of different nodes are different user
            # namespaces, which may not open each other's /proc/PID/fd, so POSIX shared memory
            # by name (/dev/shm) only.  Forced onto TCP instead, UCX 1.13 hangs in MPI_Finalize
            # in about one ring in four, bare as well.
            "UCX_TLS": "self,posix", "UCX_POSIX_USE_PROC_LINK": "n"}


def _srun(submit, cluster, site_install, family, argv):
    plugin, layout = LAYOUT[family]
    return submit("srun", f"--mpi={plugin}", *layout, *map(str, argv),
                  env=_env(cluster, site_install), timeout=300)


def _ntasks(family):
    return int(LAYOUT[family][1][1][2:])


def _check(r, family, what, expect):
    n = _ntasks(family)
    assert r.returncode == 0, f"{what}: rc={r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
    assert expect.format(n=n, sum=n * (n + 1) // 2) in r.stdout, r.stdout


@pytest.mark.parametrize("family", ["openmpi", "mpich"])
def test_bare_mpi_across_nodes(slurm_multinode, submit_multinode, site_install, site_mpitest,
                               family):
    """The baseline: the host's program, no container."""
    for what, expect in CHECKS:
        r = _srun(submit_multinode, slurm_multinode, site_install, family,
                  [site_mpitest[family], what])
        _check(r, family, what, expect)


def _container_argv(how, mode, image):
    if how == "plugin":
        opts = [f"--container={image}"] + ([f"--container-mpi={mode}"] if mode == "bind" else [])
        return opts + [MPITEST]
    return ["container-exec"] + (["--mpi", "bind"] if mode == "bind" else []) + [image, MPITEST]


@pytest.mark.parametrize("how", ["plugin", "container-exec"])
@pytest.mark.parametrize("mode", ["hybrid", "bind"])
@pytest.mark.parametrize("family", ["openmpi", "mpich"])
def test_mpi_in_containers_across_nodes(slurm_multinode, submit_multinode, site_install,
                                        mpi_images, family, mode, how):
    argv = _container_argv(how, mode, mpi_images[family])
    for what, expect in CHECKS:
        r = _srun(submit_multinode, slurm_multinode, site_install, family, argv + [what])
        _check(r, family, what, expect)
    r = _srun(submit_multinode, slurm_multinode, site_install, family, argv + ["maps"])
    assert r.returncode == 0, r.stderr[-3000:]
    libs = re.findall(r"maps rank=\d+ lib=(\S+)", r.stdout)
    assert len(libs) == _ntasks(family), r.stdout
    if mode == "bind":
        assert all(p.startswith("/.hpccont/mpi/lib/") for p in libs), libs
    else:
        assert not any(p.startswith("/.hpccont/") for p in libs), libs
