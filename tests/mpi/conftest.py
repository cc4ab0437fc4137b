"""Fixtures for the MPI tests: real images with Open MPI and MPICH, and launcher helpers.

Images are debootstrap trees (cached by tests/helpers.debootstrap_rootfs) packed with mksquashfs,
with ``mpitest.c`` compiled on the host by each MPI's own ``mpicc`` added as a pseudo file
(Debian's MPICH in the image and on the host is the same 4.0.2, so a host-built binary is what a
user would copy in).  Packed images are cached next to the trees, keyed by tree and source.
"""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import helpers  # noqa: E402

SOURCE = HERE / "mpitest.c"
IMAGE_CACHE = helpers.DEBOOTSTRAP_CACHE / "mpi-images"

# image name -> (debootstrap packages, compiler, launcher)
IMAGES = {
    "openmpi": (["python3", "python3-mpi4py", "openmpi-bin"], "mpicc", "mpirun"),
    "mpich": (["libmpich12"], "mpicc.mpich", "mpirun.mpich"),
}


def have_mpi() -> bool:
    return all(shutil.which(t) for t in ("mpicc", "mpicc.mpich", "mpirun", "mpirun.mpich"))


def compile_mpitest(compiler: str, out: Path) -> Path:
    subprocess.run([compiler, "-O2", "-o", str(out), str(SOURCE)], check=True)
    out.chmod(0o755)
    return out


def build_image(name: str) -> Path:
    """A squashfs image of the ``name`` tree with /opt/mpitest/mpitest (cached)."""
    packages, compiler, _ = IMAGES[name]
    tree = helpers.debootstrap_rootfs(f"mpi-{name}", include=packages)
    key = hashlib.sha256(f"{tree}\n".encode() + SOURCE.read_bytes()).hexdigest()[:10]
    IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
    IMAGE_CACHE.chmod(0o755)
    out = IMAGE_CACHE / f"{name}-{key}.sqsh"
    if out.exists():
        return out
    binary = compile_mpitest(compiler, IMAGE_CACHE / f"mpitest-{name}-{key}")
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    # lz4: packing a 200 MB tree takes about a second instead of ten (gzip), and both the
    # kernel and squashfuse read it.
    subprocess.run(["mksquashfs", str(tree), str(tmp), "-noappend", "-quiet", "-no-progress",
                    "-comp", "lz4", "-all-root",
                    "-p", "/opt/mpitest d 755 0 0",
                    "-p", f"/opt/mpitest/mpitest f 755 0 0 cat {binary}",
                    "-e", ".complete"],
                   check=True, stdout=subprocess.DEVNULL)
    tmp.chmod(0o644)
    os.replace(tmp, out)
    return out


@pytest.fixture(scope="session")
def mpi_images():
    """{'openmpi': Path, 'mpich': Path}: squashfs images readable by every user."""
    if not have_mpi():
        pytest.skip("needs Debian's openmpi-bin, libopenmpi-dev, mpich and libmpich-dev")
    if os.geteuid() != 0:
        pytest.skip("building the debootstrap images needs root")
    return {name: build_image(name) for name in IMAGES}


@pytest.fixture(scope="session")
def host_mpitest(world_tmp):
    """mpitest compiled for the host (native baseline): {'openmpi': path, 'mpich': path}."""
    if not have_mpi():
        pytest.skip("needs Debian's Open MPI and MPICH")
    d = world_tmp / "mpitest"
    d.mkdir(exist_ok=True)
    d.chmod(0o755)
    return {name: compile_mpitest(cc, d / f"mpitest-{name}") for name, (_p, cc, _l) in IMAGES.items()}


def launcher_argv(family: str, np: int) -> list:
    """mpirun of ``family`` for ``np`` ranks on this node (root allowed, oversubscription on:
    the test machines have two cores)."""
    if family == "openmpi":
        argv = ["mpirun", "--oversubscribe", "-np", str(np)]
        if os.geteuid() == 0:
            argv.append("--allow-run-as-root")
        return argv
    return ["mpirun.mpich", "-np", str(np)]


@pytest.fixture(scope="session")
def mpirun(install, test_user):
    """run(family, np, argv, user=False|True, env=None) -> CompletedProcess.

    Runs the real launcher with the installed ``container-exec``/``hpccont`` first on PATH, as
    root or as the unprivileged test user.
    """
    def run(family, np, argv, user=False, env=None, timeout=120):
        cmd = launcher_argv(family, np) + [str(a) for a in argv]
        e = {"PATH": f"{install['bin']}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        if env:
            e.update(env)
        if user:
            return helpers.as_user(cmd, env=e, timeout=timeout)
        full = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI", "HPCCONT_"))}
        full.update(e)
        full.setdefault("HOME", "/root")
        return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=timeout)
    return run


UNDER_MPIRUN = "test_under_mpirun.py"


def pytest_collection_modifyitems(config, items):
    """The tests of UNDER_MPIRUN run as MPI ranks, started by test_launch.py under mpirun with
    pytest-mpi enabled; in a plain pytest run they are skipped, not run as a single process."""
    if config.pluginmanager.has_plugin("pytest_mpi"):
        return
    skip = pytest.mark.skip(reason="runs as MPI ranks under mpirun (started by test_launch.py)")
    for item in items:
        if item.path.name == UNDER_MPIRUN:
            item.add_marker(skip)
