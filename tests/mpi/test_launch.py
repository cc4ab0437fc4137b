"""Real MPI jobs in containers: Open MPI 4.1 and MPICH 4.0 from Debian, 2-4 ranks, under
``mpirun`` and ``mpirun.mpich``, as root (kernel loop mounts) and as the unprivileged test user
(user namespaces + squashfuse), in hybrid and bind mode.

Every check is on results MPI itself computes (an allreduce of known values, a token passed
round a ring, a shared-memory window), or on what the kernel says (/proc/self/maps of each rank,
its mount namespace), never on our own log lines.
"""
import os
import re
import sys

import pytest

pytestmark = [pytest.mark.mpi, pytest.mark.debootstrap, pytest.mark.slow, pytest.mark.timeout(600)]

FAMILIES = ("openmpi", "mpich")
USERS = [pytest.param(False, id="root", marks=pytest.mark.root),
         pytest.param(True, id="user", marks=pytest.mark.rootless)]
MPITEST = "/opt/mpitest/mpitest"


def _ok(r):
    assert r.returncode == 0, f"rc={r.returncode}\nstdout:{r.stdout[-3000:]}\nstderr:{r.stderr[-3000:]}"
    return r.stdout


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("mode", ["hybrid", "bind"])
@pytest.mark.parametrize("family", FAMILIES)
def test_allreduce_and_ring(mpi_images, mpirun, family, mode, user):
    np = 3
    out = _ok(mpirun(family, np, ["container-exec", "--mpi", mode, mpi_images[family], MPITEST,
                                  "allreduce"], user=user))
    assert f"allreduce size={np} sum={np * (np + 1) // 2}" in out
    out = _ok(mpirun(family, np, ["container-exec", "--mpi", mode, mpi_images[family], MPITEST,
                                  "ring"], user=user))
    assert f"ring size={np} token={sum(range(np))}" in out


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("family", FAMILIES)
def test_bind_mode_loads_the_host_library(mpi_images, mpirun, family, user):
    out = _ok(mpirun(family, 2, ["container-exec", "--mpi", "bind", mpi_images[family], MPITEST,
                                 "maps"], user=user))
    libs = re.findall(r"maps rank=(\d) lib=(\S+)", out)
    assert sorted(r for r, _ in libs) == ["0", "1"], out
    for _rank, path in libs:
        assert path.startswith("/.hpccont/mpi/lib/"), path


@pytest.mark.parametrize("family", FAMILIES)
def test_hybrid_mode_uses_the_image_library(mpi_images, mpirun, family):
    out = _ok(mpirun(family, 2, ["container-exec", "--mpi", "hybrid", mpi_images[family], MPITEST,
                                 "maps"]))
    found = re.findall(r"maps rank=(\d) lib=(\S+)", out)
    assert len(found) == 2, out
    for _rank, path in found:
        assert path.startswith("/usr/lib/x86_64-linux-gnu/libmpi"), path


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("family", FAMILIES)
def test_ranks_share_memory_in_one_container(mpi_images, mpirun, family, user):
    """--join: one mount namespace for the node's ranks, and a shared window works across them."""
    np = 4
    out = _ok(mpirun(family, np, ["container-exec", mpi_images[family], MPITEST, "shm"], user=user))
    assert sorted(re.findall(r"shm rank=(\d) node_size=(\d) ok=(\d)", out)) == \
        [(str(r), str(np), "1") for r in range(np)], out
    out = _ok(mpirun(family, np, ["container-exec", mpi_images[family], "sh", "-c",
                                  "readlink /proc/self/ns/mnt /proc/self/ns/user"], user=user))
    lines = out.split()
    assert len(lines) == 2 * np and len(set(lines)) == 2, f"ranks in different namespaces: {out}"


@pytest.mark.parametrize("family,image,other", [("openmpi", "mpich", "Open MPI's mpirun"),
                                                ("mpich", "openmpi", "MPICH's hydra")])
def test_hybrid_refuses_mismatched_launcher(mpi_images, mpirun, family, image, other):
    r = mpirun(family, 2, ["container-exec", mpi_images[image], MPITEST, "allreduce"])
    assert r.returncode != 0
    assert "allreduce" not in r.stdout
    msgs = [line for line in r.stderr.splitlines() if line.startswith("container-exec:")]
    assert msgs and all(other in m for m in msgs), r.stderr


def test_bind_refuses_other_family(mpi_images, mpirun, shared_tmp):
    """The site's only host MPI is Open MPI; an MPICH image in bind mode is refused by name."""
    cfg = shared_tmp / "hpccont.yaml"
    cfg.write_text("mpi:\n  installations: [/usr/lib/x86_64-linux-gnu/libmpi.so.40]\n")
    r = mpirun("mpich", 2, ["container-exec", "--mpi", "bind", mpi_images["mpich"], MPITEST,
                            "allreduce"], env={"HPCCONT_CONFIG": str(cfg)})
    assert r.returncode != 0
    assert ("container-exec: --mpi bind: host MPI is Open MPI 4.1.4 (libmpi.so.40) but the "
            "container's is MPICH 4.0.2 (libmpich.so.12): different MPI families are not ABI "
            "compatible") in r.stderr.splitlines(), r.stderr


def test_image_from_environment(mpi_images, mpirun):
    """A module sets HPCCONT_IMAGE; the command is then the first argument."""
    out = _ok(mpirun("openmpi", 2, ["container-exec", MPITEST, "allreduce"],
                     env={"HPCCONT_IMAGE": str(mpi_images["openmpi"])}))
    assert "allreduce size=2 sum=3" in out


def test_mpi_check_on_real_images(mpi_images, hpccont):
    r = hpccont("mpi", "check", "--mode", "bind", mpi_images["openmpi"])
    assert r.returncode == 0, r.stderr
    assert re.search(r"container MPI:\s+Open MPI 4\.1\.4 \(libmpi\.so\.40 ABI 40\.30\.4", r.stdout)
    assert re.search(r"host MPI:\s+Open MPI 4\.1\.4", r.stdout)
    assert "mode:           bind (from --mode): ok" in r.stdout
    r = hpccont("mpi", "check", mpi_images["mpich"])
    assert r.returncode == 0 and "container MPI:  MPICH 4.0.2" in r.stdout
    assert "hybrid (from site config mpi.default_mode)" in r.stdout


def test_pytest_ranks_under_mpirun(mpirun, install):
    """tests/mpi/test_under_mpirun.py run by pytest-mpi as two Open MPI ranks."""
    here = os.path.dirname(os.path.abspath(__file__))
    r = mpirun("openmpi", 2, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "-p", "pytest_mpi", "--with-mpi", os.path.join(here, "test_under_mpirun.py")],
               env={"PYTHONPATH": install["lib"]}, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert r.stdout.count(" passed") == 2, r.stdout
