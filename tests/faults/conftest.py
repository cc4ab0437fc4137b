"""Fixtures of the fault tests: private images outside /tmp, and per-user state and cache
directories of their own (XDG_RUNTIME_DIR, XDG_CACHE_HOME, runtime.state_dir for root), so that
"nothing new there" is this module's finding alone, whatever else runs on the machine."""
import shutil
import tempfile
from pathlib import Path

import pytest

import faultlib
from faultlib import make_who


@pytest.fixture(scope="module")
def fault_dir():
    """A directory outside /tmp (where sites keep images) that the test user can traverse."""
    d = Path(tempfile.mkdtemp(prefix="hpccont-faults-", dir="/var/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def private_image(busybox_sif, fault_dir, request):
    """This test's own copy of the image: whatever holds it open is this test's."""
    name = request.node.name[:60].replace("/", "_").replace("[", "-").replace("]", "")
    p = fault_dir / f"{name}.sif"
    shutil.copy(busybox_sif, p)
    p.chmod(0o644)
    yield p
    faultlib.kill_holders(str(p))


@pytest.fixture(params=["user", "root"])
def who(request, fault_dir):
    """Each fault as the unprivileged test user (rootless: squashfuse) and as root (loop)."""
    pw = request.getfixturevalue("test_user") if request.param == "user" else None
    return make_who(pw, fault_dir, request.param)


@pytest.fixture
def who_for_mode(request, fault_dir):
    def make(mode):
        pw = request.getfixturevalue("test_user") if mode == "user" else None
        return make_who(pw, fault_dir, f"between-{mode}")
    return make
