"""Fixtures of the --rocm tests: one synthetic ROCm installation per session (synthetic_rocm.py)."""
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic_rocm  # noqa: E402


@pytest.fixture(scope="session")
def rocm():
    """In its own world-readable directory (the ``install`` fixture resets modes under
    world_tmp, which would take the tools' execute bits)."""
    d = Path(tempfile.mkdtemp(prefix="hpccont-rocm-", dir="/tmp"))
    d.chmod(0o755)
    yield synthetic_rocm.build(d / "rocm")
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def rocm_config(rocm):
    from hpccont.config import defaults
    cfg = defaults()
    cfg["rocm"]["ldconfig"] = rocm.ldconfig
    cfg["rocm"]["liblist"] = str(rocm.liblist)
    return cfg
