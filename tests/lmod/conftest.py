"""Fixtures for the module tests: labelled images, real Lmod in non-interactive shells, and a
recording stand-in for hpccont that shows exactly what a wrapper script passes on."""
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import helpers  # noqa: E402
from lmodlib import LMOD_INIT, RECORDER, build, labelled_rootfs, run_lmod  # noqa: E402


@pytest.fixture(scope="session")
def lmod_available():
    if not (LMOD_INIT / "bash").exists():
        pytest.skip("Lmod (Debian package lmod) is not installed")
    return LMOD_INIT


@pytest.fixture
def lmod(lmod_available):
    return run_lmod


@pytest.fixture
def recorder(shared_tmp):
    """A stand-in ``hpccont`` (and ``container-exec``) that records its arguments."""
    d = shared_tmp / "fakebin"
    d.mkdir()
    for name in ("hpccont", "container-exec"):
        (d / name).write_text(RECORDER)
        (d / name).chmod(0o755)
    return d / "hpccont"


@pytest.fixture(scope="session")
def module_image(install, busybox_rootfs, world_tmp):
    """A sandbox image naming its commands in a label, with %help text.

    ``install`` first: it makes every file under world_tmp 0644, busybox included.
    """
    busybox = busybox_rootfs / "bin" / "busybox"
    busybox.chmod(0o755)
    return labelled_rootfs(world_tmp / "images" / "mod-sandbox", busybox_rootfs,
                           {"org.hpccont.commands": "cat sh bbprintf=/bin/printf",
                            "org.opencontainers.image.description": "Busybox tools for tests",
                            "org.opencontainers.image.title": "bbtools",
                            "org.opencontainers.image.version": "1.36"},
                           help_text="Busybox [[tools]] with \"quotes\" and $dollars.\n")


@pytest.fixture(scope="session")
def module_squashfs(module_image, world_tmp):
    out = world_tmp / "images" / "mod.sqsh"
    helpers.mksquashfs(module_image, out)
    out.chmod(0o644)
    return out


@pytest.fixture(scope="session")
def module_sif(module_image, world_tmp, install):
    return build(install, module_image, world_tmp / "images" / "bbtools-1.36.sif")


@pytest.fixture(scope="session")
def sif_tree(module_sif, world_tmp, install, test_user):
    tree = world_tmp / "e2e-modules"
    r = subprocess.run([install["hpccont"], "module", "generate", str(module_sif), "--name",
                        "bbtools/1.36", "--modulepath", str(tree)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return tree
