"""Fixtures for the PBS hook tests.

``run_hook`` executes ``pbs_hooks/hpccont_launch.py`` in a fresh interpreter through
``harness/pbs_python.py``, the way MoM runs a hook in ``pbs_python``: the harness ``pbs``
module is importable, the hook config file is named by PBS_HOOK_CONFIG_FILE, and the outcome
(accept/reject, the rewritten progname/argv/env, rerun/delete, log) comes back as a dict.
The hook finds hpccont through ``pythonpath`` in its config, as on a real execution host.
"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pbslib import (DEFAULT_JOB_ID, HERE, HOOK, REPO, RUNNER, hook_runner, job_user,  # noqa: E402,F401
                    option_args, site_config_writer)


def pytest_collection_modifyitems(items):
    for item in items:
        if str(item.fspath).startswith(str(HERE)):
            item.add_marker(pytest.mark.pbs)


@pytest.fixture
def site_config(tmp_path):
    """Write a site config YAML; returns its path.  ``site_config({"images": {...}})``."""
    return site_config_writer(tmp_path)


@pytest.fixture
def run_hook(install, tmp_path, site_config):
    return hook_runner(install, tmp_path, site_config)


def launch_env(outcome: dict) -> dict:
    return dict(outcome["env"])


