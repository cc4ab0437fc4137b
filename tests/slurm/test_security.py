"""The root side of the Slurm plugin, attacked as an unprivileged user would.

slurmstepd runs one program as root per step and node ("hpccont slurm account", accounting).
Nothing of the job's may act in it: each test plants what an attacker would (a preloaded
library, a fake scontrol first on PATH, a sitecustomize on PYTHONPATH, a FIFO or a root-only file
as the image) as the real user ``hpcuser``, through real srun and sbatch, and checks that it
never ran or was read as root.  The planted programs log their real and effective uid and user namespace to
a file every user can append to; uid 0 in the initial user namespace is the escalation (uid 0
inside the user's own namespace, as squashfuse has in a rootless container, is the user).
"""
import hashlib
import os
import subprocess
import time

import pytest

import helpers

pytestmark = [pytest.mark.slurm, pytest.mark.rootless]

INIT_USERNS = "user:[4026531837]"   # the kernel's fixed inode number of the initial namespace
EVIL_C = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void planted(void)
{
    char exe[256] = "", ns[64] = "";
    FILE *f = fopen(LOG, "a");
    readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    readlink("/proc/self/ns/user", ns, sizeof(ns) - 1);
    if (f) { fprintf(f, "%d %d %s %s\n", (int)getuid(), (int)geteuid(), ns, exe); fclose(f); }
}
"""


@pytest.fixture
def trap(shared_tmp):
    """A log every planted program appends "UID EUID USERNS ..." to, and a helper to read the
    uids seen in the host's (initial) user namespace."""
    log = shared_tmp / "planted.log"
    log.write_text("")
    log.chmod(0o666)

    def uids():
        lines = [line.split() for line in log.read_text().splitlines()]
        return {int(x) for w in lines if len(w) < 3 or w[2] == INIT_USERNS for x in w[:2]}
    return log, uids


def planted_library(directory, log):
    """A gcc-built library whose constructor logs the uids of whatever loads it."""
    so, src = directory / "planted.so", directory / "planted.c"
    src.write_text(EVIL_C)
    subprocess.run(["cc", "-shared", "-fPIC", f'-DLOG="{log}"', "-o", str(so), str(src)],
                   check=True)
    so.chmod(0o755)
    return so


def _wait_for_records(slurm_cluster, job, n=1):
    return helpers.accounting_records(slurm_cluster.accounting, lambda r: r["job"] == job, n)


def _job_id(r):
    return r.stdout.split()[-1]


def test_preloaded_library_never_runs_as_root(submit, images, shared_tmp, trap, slurm_cluster):
    log, uids = trap
    so = planted_library(shared_tmp, log)
    env = {"LD_PRELOAD": str(so), "LD_LIBRARY_PATH": str(shared_tmp), "LD_AUDIT": str(so)}
    r = submit("srun", f"--container={images['sqsh']}", "sh", "-c", "echo $SLURM_JOB_ID", env=env)
    assert r.returncode == 0, r.stderr
    assert _wait_for_records(slurm_cluster, _job_id(r)), "the step was not recorded"
    seen = uids()
    assert seen, "the planted library never ran at all: the test proves nothing"
    assert 0 not in seen, log.read_text()


def test_fake_scontrol_and_sitecustomize_never_run_as_root(submit, images, shared_tmp, trap,
                                                         slurm_cluster):
    log, uids = trap
    bindir = shared_tmp / "bin"
    bindir.mkdir()
    fake = bindir / "scontrol"
    fake.write_text(f"#!/bin/sh\necho \"$(id -ru) $(id -u) $(readlink /proc/self/ns/user) scontrol\" >> {log}\nexec /usr/bin/scontrol \"$@\"\n")
    fake.chmod(0o755)
    pydir = shared_tmp / "py"
    pydir.mkdir()
    (pydir / "sitecustomize.py").write_text(
        f"import os\nwith open({str(log)!r}, 'a') as f:\n"
        f"    f.write('%d %d %s python\\n' % (os.getuid(), os.geteuid(), os.readlink('/proc/self/ns/user')))\n")
    os.chmod(pydir, 0o755)
    env = {"PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": str(pydir),
           "PYTHONSTARTUP": str(pydir / "sitecustomize.py")}
    r = submit("srun", f"--container={images['sqsh']}", "sh", "-c", "echo $SLURM_JOB_ID", env=env)
    assert r.returncode == 0, r.stderr
    job = _job_id(r)
    assert _wait_for_records(slurm_cluster, job)
    # The AdminComment was still set: by the real scontrol, found by absolute path.
    comment = helpers.admin_comment(slurm_cluster, job)
    assert comment and comment.startswith("hpccont:")
    # The user's own scontrol use (none here) is theirs; nothing planted ran as root.
    assert 0 not in uids()


def test_sbatch_job_environment_never_reaches_root(submit, images, shared_tmp, trap,
                                                   slurm_cluster):
    log, uids = trap
    so = planted_library(shared_tmp, log)
    script = shared_tmp / "job.sh"
    script.write_text("#!/bin/sh\necho $SLURM_JOB_ID\n")
    out = shared_tmp / "job.out"
    r = submit("sbatch", "--wait", "-o", str(out), f"--container={images['sqsh']}",
               f"--export=ALL,LD_PRELOAD={so}", str(script), env={"LD_PRELOAD": str(so)})
    assert r.returncode == 0, r.stderr
    job = out.read_text().split()[-1]
    assert _wait_for_records(slurm_cluster, job)
    assert uids() and 0 not in uids(), log.read_text()


def test_root_only_image_is_not_read_as_root(submit, shared_tmp, busybox_sif, slurm_cluster):
    """A 0600 root file named as the image: the step fails for the user, and its digest appears
    nowhere (record opened it as the user and was refused)."""
    secret = slurm_cluster.dir / "secret.sif"
    secret.write_bytes(busybox_sif.read_bytes() + b"root only")
    secret.chmod(0o600)
    digest = hashlib.sha256(secret.read_bytes()).hexdigest()
    r = submit("srun", f"--container={secret}", "sh", "-c", "echo $SLURM_JOB_ID")
    assert r.returncode != 0
    assert "Permission denied" in r.stderr or "permission denied" in r.stderr
    cache = slurm_cluster.accounting.parent / (slurm_cluster.accounting.name + ".digests")
    recs = helpers.accounting_records(slurm_cluster.accounting,
                                      lambda x: x["image"] == str(secret))
    text = slurm_cluster.accounting.read_text() + (cache.read_text() if cache.exists() else "")
    assert digest not in text
    assert recs and all(not x["sha256"] and x["error"] for x in recs)
    if cache.exists():
        assert cache.stat().st_mode & 0o077 == 0


def test_fifo_as_image_neither_hangs_nor_runs(submit, shared_tmp, slurm_cluster):
    fifo = shared_tmp / "img.sif"
    os.mkfifo(fifo)
    fifo.chmod(0o666)
    start = time.monotonic()
    r = submit("srun", f"--container={fifo}", "true", timeout=60)
    assert r.returncode != 0
    assert time.monotonic() - start < 30
    lines = [x for x in r.stderr.splitlines() if x.startswith("hpccont:")]
    assert len(lines) == 1, r.stderr
