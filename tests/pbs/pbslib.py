"""Paths and small helpers shared by the PBS tests (a module of its own: every test directory
has a conftest.py, so importing names from "conftest" would pick whichever came first)."""
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
HOOK = REPO / "pbs_hooks" / "hpccont_launch.py"
RUNNER = HERE / "harness" / "pbs_python.py"
DEFAULT_JOB_ID = "4242.pbsserver"


def option_args(argv, image):
    """The hpccont options between ``exec`` and the image."""
    return argv[2:argv.index(str(image))]


def job_user() -> str:
    """The job's owner in hook runs: the unprivileged test user when the tests run as root
    (the hooks open the job's paths with that user's rights), else whoever runs them."""
    import pwd
    if os.geteuid() == 0:
        import helpers
        return helpers.ensure_test_user().pw_name
    return pwd.getpwuid(os.geteuid()).pw_name


def hook_runner(install, tmp_path, site_config):
    """``run(event_type, ...)``: one hook run through the harness, its outcome as a dict (see
    conftest.run_hook)."""
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


def site_config_writer(tmp_path):
    """``write(sections)``: a site config YAML in ``tmp_path``; returns its path."""
    def write(sections=None):
        import yaml
        path = tmp_path / "hpccont.yaml"
        path.write_text(yaml.safe_dump(sections or {}))
        return str(path)
    return write
