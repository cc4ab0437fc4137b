"""Fixtures for the --nv tests: one synthetic driver per session (see synthetic_driver.py)."""
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic_driver  # noqa: E402


@pytest.fixture(scope="session")
def driver():
    """Built in its own world-readable directory: the session's ``install`` fixture resets the
    modes of everything under world_tmp, which would take nvidia-smi's execute bit."""
    d = Path(tempfile.mkdtemp(prefix="hpccont-nv-driver-", dir="/tmp"))
    d.chmod(0o755)
    yield synthetic_driver.build(d / "driver")
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def nv_config(driver):
    """The site config (as config.load returns it) pointing --nv at the synthetic driver."""
    from hpccont.config import defaults
    cfg = defaults()
    cfg["nvidia"]["ldconfig"] = driver.ldconfig
    cfg["nvidia"]["liblist"] = str(driver.liblist)
    return cfg
