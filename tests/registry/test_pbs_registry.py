"""``-l container=docker://...`` under PBS: the real hook file run through the documented-API
harness (tests/pbs/harness: no PBS server can run here; the hook logic is the plain functions a
real MoM calls unchanged), against this suite's real registry, the tasks executed for real as
the unprivileged user.  The hooks run as root and never pull: the task's own ``hpccont exec``
pulls as the user, once per job."""
import sys
from pathlib import Path

import pytest

import helpers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pbs"))
import pbslib  # noqa: E402

pytestmark = [pytest.mark.registry, pytest.mark.pbs, pytest.mark.rootless]


@pytest.fixture
def run_hook(install, tmp_path):
    return pbslib.hook_runner(install, tmp_path, pbslib.site_config_writer(tmp_path))


@pytest.fixture
def job_env(user_env, test_user):
    """What the job carries: the user's registry settings (CA, credentials, cache)."""
    return dict(user_env, HOME=test_user.pw_dir, USER=test_user.pw_name,
                LOGNAME=test_user.pw_name, PATH="/usr/bin:/bin")


def _launch(run_hook, ref, job_env, **kw):
    return run_hook("execjob_launch", resources={"container": ref}, variables=job_env,
                    env=job_env, **kw)


def _execute(outcome, stdin=None):
    assert outcome["accepted"], outcome
    env = outcome["env"]
    argv = ["/usr/bin/env", "-i"] + [f"{k}={v}" for k, v in env.items()] + outcome["argv"]
    return helpers.as_user(argv, env=None, input=stdin, timeout=120)


def test_job_runs_a_registry_image_pulled_once(run_hook, images, job_env, registry, shared_tmp):
    ref = images["many"]["ref"]
    mark = registry.mark()
    begin = run_hook("execjob_begin", resources={"container": ref}, variables=job_env)
    assert begin["accepted"], begin
    assert registry.log_since(mark).count("response completed") == 0   # the hook pulls nothing
    script = _launch(run_hook, ref, job_env)
    assert ref in script["argv"]
    r = _execute(script, stdin="cat /opt/layer03\necho job=$PBS_JOBID\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["3", f"job={pbslib.DEFAULT_JOB_ID}"]
    # A TM task of the same job: the cached SIF, the tag as the job pinned it, no request.
    mark = registry.mark()
    task = _launch(run_hook, ref, dict(job_env, PBS_TASKNUM="2"), in_ms_mom=False,
                   progname="/bin/sh", argv=["sh", "-c", "cat /opt/layer07"])
    r = _execute(task)
    assert (r.returncode, r.stdout.strip()) == (0, "7"), r.stderr
    assert registry.log_since(mark).count("response completed") == 0
    sifs = [p for p in (shared_tmp / "cache" / "sif").iterdir() if p.suffix == ".sif"]
    assert len(sifs) == 1
    end = run_hook("execjob_end", resources={"container": ref}, variables=job_env)
    assert end["accepted"], end
    assert registry.log_since(mark).count("response completed") == 0


@pytest.mark.parametrize("site, expect", [
    ({"registry": {"allowed": ["registry.example.org"]}}, "not allowed"),
    ({"signatures": {"require": True}}, "requires signed"),
    ({"images": {"allowed_dirs": ["/srv/images"]}}, "only from /srv/images"),
])
def test_site_policy_rejects_before_the_job_starts(run_hook, images, job_env, registry, site,
                                                   expect):
    mark = registry.mark()
    out = run_hook("execjob_begin", resources={"container": images["gzip"]["ref"]},
                   variables=job_env, site=site)
    assert not out["accepted"]
    assert expect in out["reject_msg"], out
    assert "\n" not in out["reject_msg"].strip()
    assert registry.log_since(mark).count("response completed") == 0


def test_bad_reference_rejected(run_hook, job_env):
    out = run_hook("execjob_begin", resources={"container": "docker://Bad Name!"},
                   variables=job_env)
    assert not out["accepted"] and "docker://Bad Name!" in out["reject_msg"], out
