"""Fixtures for the PBS hook tests.

``run_hook`` executes ``pbs_hooks/hpccont_launch.py`` in a fresh interpreter through
``harness/pbs_python.py``, the way MoM runs a hook in ``pbs_python``: the harness ``pbs``
module is importable, the hook config file is named by PBS_HOOK_CONFIG_FILE, and the outcome
(accept/reject, the rewritten progname/argv/env, rerun/delete, log) comes back as a dict.
The hook finds hpccont through ``pythonpath`` in its config, as on a real execution host.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pbslib import DEFAULT_JOB_ID, HERE, HOOK, REPO, RUNNER, job_user, option_args  # noqa: E402,F401


def pytest_collection_modifyitems(items):
    for item in items:
        if str(item.fspath).startswith(str(HERE)):
            item.add_marker(pytest.mark.pbs)


@pytest.fixture
def site_config(tmp_path):
    """Write a site config YAML; returns its path.  ``site_config({"images": {...}})``."""
    def write(sections=None):
        import yaml
        path = tmp_path / "hpccont.yaml"
        path.write_text(yaml.safe_dump(sections or {}))
        return str(path)
    return write


@pytest.fixture
def run_hook(install, tmp_path, site_config):
    counter = [0]
    default_user = job_user()

    def run(event_type, *, job_id=DEFAULT_JOB_ID, variables=None, resources=None,
            progname=None, argv=None, env=None, in_ms_mom=True, config=None, site=None,
            raw_config=None, hook=HOOK, euser=None, hook_environ=None, timeout=120):
        counter[0] += 1
        work = tmp_path / f"hook-run-{counter[0]}"
        work.mkdir()
        import sysconfig
        pythonpath = [install["lib"], sysconfig.get_paths()["purelib"]]   # hpccont, then PyYAML
        hook_cfg = {"hpccont": install["hpccont"], "pythonpath": pythonpath,
                    "site_config": site_config(site), "cleanup_grace": 2}
        hook_cfg.update(config or {})
        cfg_path = work / "hpccont.json"
        cfg_path.write_text(raw_config if raw_config is not None else json.dumps(hook_cfg))
        job_vars = {"PBS_O_WORKDIR": str(tmp_path), "PBS_O_HOME": "/root",
                    "PBS_O_LOGNAME": "root", "PBS_JOBID": job_id}
        job_vars.update(variables or {})
        spec = {"type": event_type,
                "job": {"id": job_id, "euser": euser if euser is not None else default_user,
                        "Variable_List": job_vars,
                        "Resource_List": {"ncpus": 1, **(resources or {})},
                        "in_ms_mom": in_ms_mom}}
        if event_type == "execjob_launch":
            task_env = dict(job_vars, PBS_TASKNUM="1", HOME="/root")
            task_env.update(env or {})
            spec.update(progname=progname or "/bin/sh", argv=argv or ["-sh"], env=task_env)
        if hook_environ:
            spec["hook_environ"] = hook_environ
        (work / "event.json").write_text(json.dumps(spec))
        mom_env = {"PATH": "/usr/bin:/bin", "PBS_HOOK_CONFIG_FILE": str(cfg_path)}
        r = subprocess.run([sys.executable, str(RUNNER), str(hook), str(work / "event.json"),
                            str(work / "outcome.json")], env=mom_env, capture_output=True,
                           text=True, timeout=timeout)
        assert r.returncode == 0, r.stderr
        out = json.loads((work / "outcome.json").read_text())
        out["stderr"] = r.stderr
        return out
    return run


def launch_env(outcome: dict) -> dict:
    return dict(outcome["env"])


