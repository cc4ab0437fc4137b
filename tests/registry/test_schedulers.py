"""Registry images under the batch system: ``srun --container=docker://...`` on the real Slurm
test cluster, as the unprivileged user, against the real registry of this suite."""
import os

import pytest

import helpers

pytestmark = [pytest.mark.slurm, pytest.mark.registry, pytest.mark.rootless]


def _entries(slurm_cluster, job):
    return helpers.accounting_records(slurm_cluster.accounting, lambda r: r["job"] == job)


def test_srun_runs_a_registry_image_pulled_once(submit, images, user_env, slurm_cluster,
                                                shared_tmp, registry):
    ref = images["many"]["ref"]
    mark = registry.mark()
    r = submit("srun", "-n", "2", f"--container={ref}", "sh", "-c",
               "cat /opt/layer11; echo $SLURM_JOB_ID", env=user_env, timeout=90)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines.count("11") == 2, r.stdout
    job = lines[-1]
    # One conversion in the user's cache for both tasks, prepare and the accounting step.
    sifs = [p for p in (shared_tmp / "cache" / "sif").iterdir() if p.suffix == ".sif"]
    assert len(sifs) == 1
    # Each blob came over the network once, whoever of them pulled first.
    digests = [g["digest"] for g in registry.blob_gets(since=mark) if g["status"] == 200]
    assert digests and len(digests) == len(set(digests)), digests
    entries = _entries(slurm_cluster, job)
    assert len(entries) == 1, entries
    e = entries[0]
    assert e["reference"] == ref and e["manifest_digest"] == images["many"]["digest"], (e, sorted(os.listdir(shared_tmp / "cache" / "sif")))
    assert e["kind"] == "sif" and e["sha256"] and not e["error"]


def test_srun_with_a_missing_tag_fails_with_one_line(submit, images, user_env):
    ref = images["gzip"]["ref"].rsplit(":", 1)[0] + ":no-such-tag"
    r = submit("srun", f"--container={ref}", "true", env=user_env, timeout=120)
    assert r.returncode != 0
    mine = [x for x in r.stderr.splitlines() if x.startswith("hpccont:")]
    assert len(mine) == 1 and "no-such-tag" in mine[0], r.stderr
