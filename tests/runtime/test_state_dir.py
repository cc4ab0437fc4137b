"""The per-user state directory (keepers of ``--join`` containers, instances, Slurm steps)
cannot be pre-empted by another user.

Without XDG_RUNTIME_DIR (usual in batch jobs) it is ``/tmp/hpccont-UID``, a name anyone can
create first.  The victim here is a dedicated user (``hpcstate``), so that the directory planted
for it cannot disturb other tests running as ``hpcuser``; the attacker is ``hpcuser``.
"""
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import helpers

VICTIM = "hpcstate"
pytestmark = pytest.mark.rootless


@pytest.fixture
def victim(test_user):
    pw = helpers.ensure_test_user(VICTIM)
    planted = [Path(f"/tmp/hpccont-{pw.pw_uid}")]
    yield pw
    for p in planted + list(Path("/tmp").glob(f"hpccont-{pw.pw_uid}-*")):
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.exists():
            # a --join keeper leaving at this moment removes its own files
            shutil.rmtree(p, ignore_errors=True)
    shutil.rmtree(Path(pw.pw_dir) / ".cache" / "hpccont", ignore_errors=True)


def as_victim(install, *args, env=None, **kw):
    return helpers.as_user([install["hpccont"], *map(str, args)], user=VICTIM, env=env, **kw)


def state_dir_of(install, env=None):
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from hpccont import config; "
            "from hpccont.runtime.join import state_dir; print(state_dir(config.defaults()))")
    r = helpers.as_user([sys.executable, "-c", code, install["lib"]], user=VICTIM, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def joined_pair(install, image, key="k"):
    """Two tasks with one --join key started together: both must run, in one container."""
    argv = [install["hpccont"], "exec", "--join", key, str(image), "sh", "-c",
            "readlink /proc/self/ns/mnt; sleep 1"]
    procs = [subprocess.Popen(["runuser", "-u", VICTIM, "--", "env", "-i",
                               "PATH=/usr/bin:/bin", f"HOME={pwd.getpwnam(VICTIM).pw_dir}",
                               *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    namespaces = {out.strip() for out, _ in outs}
    assert len(namespaces) == 1, outs
    return namespaces


def attacker(cmd):
    r = helpers.as_user(["sh", "-c", cmd])
    assert r.returncode == 0, r.stderr


def test_state_dir_created_private(install, victim):
    d = state_dir_of(install)
    assert d == f"/tmp/hpccont-{victim.pw_uid}"
    st = os.lstat(d)
    assert st.st_uid == victim.pw_uid and (st.st_mode & 0o777) == 0o700


@pytest.mark.parametrize("plant", ["open-dir", "private-dir", "symlink", "file"])
def test_preempted_tmp_dir_is_not_used(install, victim, busybox_sif, plant):
    name = f"/tmp/hpccont-{victim.pw_uid}"
    attacker({"open-dir": f"mkdir -m 777 {name}",
              "private-dir": f"mkdir -m 700 {name}",
              "symlink": f"mkdir -p -m 777 /tmp/hpcuser-bait && ln -s /tmp/hpcuser-bait {name}",
              "file": f"touch {name}"}[plant])
    d = state_dir_of(install)
    assert d.startswith(f"/tmp/hpccont-{victim.pw_uid}-") and d != name
    st = os.lstat(d)
    assert st.st_uid == victim.pw_uid and (st.st_mode & 0o777) == 0o700
    assert state_dir_of(install) == d          # every task of the user finds the same one
    joined_pair(install, busybox_sif)
    if plant in ("open-dir", "private-dir"):
        assert os.listdir(name) == []           # nothing of the victim's went there
    if plant == "symlink":
        assert os.listdir("/tmp/hpcuser-bait") == []
        shutil.rmtree("/tmp/hpcuser-bait")


def test_fallback_dir_preempted_too(install, victim):
    """Someone who saw the fallback name and got it after /tmp was cleaned: a new one."""
    attacker(f"mkdir -m 777 /tmp/hpccont-{victim.pw_uid}")
    first = state_dir_of(install)
    shutil.rmtree(first)
    attacker(f"mkdir -m 777 {first}")
    second = state_dir_of(install)
    assert second != first and os.lstat(second).st_uid == victim.pw_uid


def test_xdg_runtime_dir_must_be_ours(install, victim):
    attacker("mkdir -p -m 777 /tmp/hpcuser-xdg")
    try:
        assert state_dir_of(install, env={"XDG_RUNTIME_DIR": "/tmp/hpcuser-xdg"}) == \
            f"/tmp/hpccont-{victim.pw_uid}"
        assert os.listdir("/tmp/hpcuser-xdg") == []
        own = Path(f"/tmp/xdg-{victim.pw_uid}")
        own.mkdir(mode=0o700)
        os.chown(own, victim.pw_uid, victim.pw_gid)
        assert state_dir_of(install, env={"XDG_RUNTIME_DIR": str(own)}) == \
            f"{own}/hpccont-{victim.pw_uid}"
    finally:
        shutil.rmtree("/tmp/hpcuser-xdg", ignore_errors=True)
        shutil.rmtree(f"/tmp/xdg-{victim.pw_uid}", ignore_errors=True)


def test_slurm_step_tasks_share_a_container_despite_preemption(slurm_cluster, install, victim,
                                                               busybox_sif, shared_tmp):
    attacker(f"mkdir -m 777 /tmp/hpccont-{victim.pw_uid}")
    env = dict(slurm_cluster.env)
    cmd = ["sh", "-c", 'cd "$0" && exec "$@"', str(shared_tmp), "srun", "-n", "3",
           "--overcommit", f"--container={busybox_sif}", "sh", "-c", "readlink /proc/self/ns/mnt"]
    r = helpers.as_user(cmd, user=VICTIM, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.split()
    assert len(lines) == 3 and len(set(lines)) == 1, r.stdout
    assert os.listdir(f"/tmp/hpccont-{victim.pw_uid}") == []


def test_user_state_dirs_for_root_side_cleanup(install, victim):
    attacker(f"mkdir -m 777 /tmp/hpccont-{victim.pw_uid}")
    d = state_dir_of(install)
    from hpccont.runtime.join import user_state_dirs
    assert d in user_state_dirs(victim.pw_uid, victim.pw_dir)
    assert f"/tmp/hpccont-{victim.pw_uid}" in user_state_dirs(victim.pw_uid, None)
