"""A small version of bench/load: 40 launches of one image, 10 at a time, alternating root and
the test user, through ``hpccont exec`` and through ``srun --container``: no failure, and
nothing left once the launches are over (mounts, processes, descriptors of the Slurm daemons,
files in the state and cache directories and the Slurm spool).  No timing is asserted; the
full run and its figures: ``sudo bench/load`` (docs/security.md)."""
import subprocess

import pytest

from faultlib import wait_for
from loadlib import (LoadUser, exec_argv, leaks, run_load, settle, snapshot, srun_argv, warm)

pytestmark = [pytest.mark.slow, pytest.mark.rootless, pytest.mark.root, pytest.mark.timeout(600)]

TOTAL, PARALLEL = 40, 10
DAEMONS = ("slurmd", "slurmctld", "slurmstepd")


@pytest.fixture
def users(test_user, fault_dir, request):
    return [LoadUser(None, fault_dir / request.node.name), LoadUser(test_user, fault_dir /
                                                                     request.node.name)]


def _load(argv, users, image, cwd, extra_dirs=(), daemons=()):
    warm(argv, users, cwd)
    before = settle(image, users, extra_dirs=extra_dirs, daemons=daemons)
    result = run_load(argv, users, TOTAL, PARALLEL, cwd)
    after = settle(image, users, extra_dirs=extra_dirs, daemons=daemons, baseline=before)
    return result, leaks(before, after), before


def test_exec_load(install, private_image, users, fault_dir):
    result, leaked, before = _load(exec_argv(install["hpccont"], private_image), users,
                                   private_image, fault_dir)
    assert result["failures"] == 0, result
    assert leaked == {}, leaked
    # ... and the check sees a launch that is still there
    held = subprocess.Popen(exec_argv(install["hpccont"], private_image)[:-1] + ["sleep", "30"],
                            env=users[1].env, cwd=fault_dir, **users[1].ids)
    try:
        wait_for(lambda: any("sleep 30" in p for p in
                             leaks(before, snapshot(private_image, users)).get("processes", [])),
                 what="the held launch among the leaks")
        assert snapshot(private_image, users)["holders"] >= 1
    finally:
        held.kill()
        held.wait()


@pytest.mark.slurm
def test_srun_load(slurm_cluster, private_image, users, fault_dir):
    spool = slurm_cluster.dir / "slurmd" if hasattr(slurm_cluster, "dir") else None
    for u in users:
        u.env.update(slurm_cluster.env)
    result, leaked, _ = _load(srun_argv(private_image), users, private_image, fault_dir,
                              extra_dirs=[spool] if spool else [], daemons=DAEMONS)
    assert result["failures"] == 0, result
    assert leaked == {}, leaked
