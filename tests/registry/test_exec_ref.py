"""``hpccont exec|run docker://...`` as the unprivileged user against the suite's real registry
(TLS, Basic auth), as Apptainer runs a registry reference: pulled into the cache once, then the
cached SIF is run; bad references fail with one line and leave the cache clean."""
import concurrent.futures

import pytest

from regtools import cache_is_clean, one_line_error

pytestmark = [pytest.mark.registry, pytest.mark.rootless]


def _cached_sifs(shared_tmp):
    d = shared_tmp / "cache" / "sif"
    return sorted(p for p in d.iterdir() if p.suffix == ".sif") if d.is_dir() else []


def test_exec_and_run_a_registry_reference(hpccont_user, images, user_env, shared_tmp, registry):
    ref = images["gzip"]["ref"]
    r = hpccont_user("exec", ref, "sh", "-c", "cat /opt/app; echo $GREETING", env=user_env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["app v2", "hello from the registry"]
    assert r.stderr == ""                         # no progress off a terminal
    assert len(_cached_sifs(shared_tmp)) == 1
    # The second launch downloads and converts nothing: the tag is resolved, the SIF reused.
    mark = registry.mark()
    r = hpccont_user("run", ref, env=user_env)
    assert r.returncode == 0 and r.stdout.strip() == "from-cmd", r.stderr
    assert "/blobs/" not in registry.log_since(mark)
    assert len(_cached_sifs(shared_tmp)) == 1
    cache_is_clean(shared_tmp / "cache")


def test_concurrent_first_launches_pull_once(hpccont_user, images, user_env, shared_tmp,
                                             registry):
    ref = images["many"]["ref"]
    mark = registry.mark()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda _: hpccont_user("exec", ref, "cat", "/opt/layer05",
                                                    env=user_env), range(4)))
    assert [r.returncode for r in runs] == [0] * 4, [r.stderr for r in runs]
    assert all(r.stdout.strip() == "5" for r in runs)
    digests = [g["digest"] for g in registry.blob_gets(since=mark) if g["status"] == 200]
    assert digests and len(digests) == len(set(digests)), digests
    assert len(_cached_sifs(shared_tmp)) == 1


@pytest.mark.parametrize("suffix, expect", [(":no-such-tag", "no-such-tag"),
                                            ("-missing:latest", "not found")])
def test_missing_image_one_line(hpccont_user, images, user_env, shared_tmp, suffix, expect):
    base = images["gzip"]["ref"].rsplit(":", 1)[0]
    r = hpccont_user("exec", base + suffix, "true", env=user_env)
    assert r.returncode != 0
    line = one_line_error(r)
    assert expect in line, r.stderr
    assert _cached_sifs(shared_tmp) == []


def test_a_job_resolves_a_tag_once(hpccont_user, images, user_env, shared_tmp, registry):
    """Inside a job (PBS_JOBID or SLURM_JOB_ID), the first task's digest is every later task's:
    no further registry request, even for the manifest."""
    ref = images["zstd"]["ref"]
    job = dict(user_env, PBS_JOBID="4242.server")
    assert hpccont_user("exec", ref, "sh", "-c", "exit 0", env=job).returncode == 0
    mark = registry.mark()
    r = hpccont_user("exec", ref, "cat", "/opt/app", env=job)
    assert r.returncode == 0, r.stderr
    assert registry.log_since(mark).count("response completed") == 0
    # Another job resolves the tag again (one manifest request, no blob).
    mark = registry.mark()
    r = hpccont_user("exec", ref, "sh", "-c", "exit 0",
                     env=dict(user_env, SLURM_JOB_ID="77"))
    assert r.returncode == 0, r.stderr
    log = registry.log_since(mark)
    assert "/manifests/" in log and "/blobs/" not in log
    assert len(_cached_sifs(shared_tmp)) == 1
