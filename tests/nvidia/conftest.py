"""Fixtures for the --nv tests: one synthetic driver per session (see synthetic_driver.py)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic_driver  # noqa: E402


@pytest.fixture(scope="session")
def driver(world_tmp):
    return synthetic_driver.build(world_tmp / "nvidia-driver")


@pytest.fixture
def nv_config(driver):
    """The site config (as config.load returns it) pointing --nv at the synthetic driver."""
    from hpccont.config import defaults
    cfg = defaults()
    cfg["nvidia"]["ldconfig"] = driver.ldconfig
    cfg["nvidia"]["liblist"] = str(driver.liblist)
    return cfg
