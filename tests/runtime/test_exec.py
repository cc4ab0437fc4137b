"""``hpccont exec/run/shell/test`` for real: busybox images made with mksquashfs and the SIF
writer, run as root (loop device + kernel squashfs) and as the unprivileged test user (user
namespace + squashfuse)."""
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

import helpers

pytestmark = pytest.mark.rootless

RUNNERS = ["root", "user"]
IMAGES = ["squashfs", "sif", "sandbox"]


@pytest.fixture(params=IMAGES)
def image(request, busybox_squashfs, busybox_sif, busybox_rootfs):
    return {"squashfs": busybox_squashfs, "sif": busybox_sif, "sandbox": busybox_rootfs}[request.param]


@pytest.fixture(params=RUNNERS)
def run(request, hpccont, hpccont_user, test_user):
    """run(*args, cwd=None, env=None) as root or as the test user; .user says which."""
    if request.param == "root":
        def f(*args, cwd=None, env=None, **kw):
            return hpccont(*args, cwd=cwd, env=env, **kw)
        f.uid, f.name = 0, "root"
    else:
        def f(*args, cwd=None, env=None, **kw):
            return hpccont_user(*args, cwd=cwd, env=env, **kw)
        f.uid, f.name = test_user.pw_uid, test_user.pw_name
    return f


def _no_leftovers(image_path):
    """No FUSE server and no loop device may survive the container."""
    deadline = time.time() + 5
    while time.time() < deadline:
        fuse = helpers.fuse_processes(str(image_path))
        loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
        if not fuse and str(image_path) not in loops:
            return
        time.sleep(0.1)
    pytest.fail(f"left behind: fuse={fuse} loops={loops!r}")


def test_identity_home_cwd_tmp(run, image, shared_tmp):
    marker = shared_tmp / "host-file"
    marker.write_text("from the host\n")
    r = run("exec", image, "sh", "-c",
            'id -u; id -un; echo "$HOME"; pwd; cat host-file; ls -d "$HOME"; '
            'grep "^$(id -un):" /etc/passwd | cut -d: -f3; echo x > /tmp/from-container-$$; echo $$',
            cwd=shared_tmp)
    assert r.returncode == 0, r.stderr
    out = r.stdout.split("\n")
    assert out[0] == str(run.uid) and out[1] == run.name
    assert out[3] == str(shared_tmp) and out[4] == "from the host"
    assert out[6] == str(run.uid)
    assert Path(f"/tmp/from-container-{out[7]}").exists()
    os.unlink(f"/tmp/from-container-{out[7]}")
    _no_leftovers(image)


def test_exit_status_and_missing_command(run, image):
    r = run("exec", image, "sh", "-c", "exit 42")
    assert r.returncode == 42
    r = run("exec", image, "no-such-command", "arg")
    assert r.returncode == 127
    assert r.stderr.strip().count("\n") == 0 and "no-such-command" in r.stderr
    assert "not found" in r.stderr and "Traceback" not in r.stderr
    _no_leftovers(image)


def test_readonly_root_and_writable_tmpfs(run, busybox_sif):
    r = run("exec", busybox_sif, "sh", "-c", "touch /newfile")
    assert r.returncode != 0 and "Read-only file system" in r.stderr
    r = run("exec", "--writable-tmpfs", busybox_sif, "sh", "-c",
            "echo hi > /newfile && cat /newfile && echo x > /etc/newconf && cat /etc/newconf")
    assert r.returncode == 0 and r.stdout.split() == ["hi", "x"], r.stderr
    r = run("exec", busybox_sif, "ls", "/newfile")  # nothing kept
    assert r.returncode != 0


def test_bind_options(run, busybox_sif, shared_tmp):
    d = shared_tmp / "data"
    d.mkdir()
    (d / "f").write_text("payload\n")
    d.chmod(0o777)
    r = run("exec", "-B", f"{d}:/scratch/deep/data:ro", "--bind", f"{d}:/rw", busybox_sif,
            "sh", "-c", "cat /scratch/deep/data/f; touch /scratch/deep/data/g; echo $?; "
            "touch /rw/h && echo rw-ok")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0] == "payload"
    assert "rw-ok" in r.stdout and not (d / "g").exists() and (d / "h").exists()
    r = run("exec", busybox_sif, "sh", "-c", "ls /data", env={"HPCCONT_BIND": f"{d}:/data"})
    assert r.stdout.split() == ["f", "h"]


@pytest.mark.parametrize("args,message", [
    (["-B", "/nonexistent-dir"], "bind source /nonexistent-dir does not exist"),
    (["-B", "/tmp:/x:bogus"], "bad bind option 'bogus'"),
    (["-B", "/tmp:relative"], "destination must be an absolute path"),
    (["-B", "/tmp:/../../x"], "escapes the container root"),
    (["--bogus"], "unknown option --bogus"),
    (["--pwd", "/does/not/exist"], "working directory /does/not/exist"),
])
def test_bad_inputs_one_line(run, busybox_sif, args, message):
    r = run("exec", *args, busybox_sif, "true")
    assert r.returncode != 0
    assert message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    _no_leftovers(busybox_sif)


def test_unreadable_bind_source(hpccont_user, busybox_sif, shared_tmp):
    secret = shared_tmp / "secret"
    secret.mkdir(mode=0o700)
    r = hpccont_user("exec", "-B", str(secret), busybox_sif, "true")
    assert r.returncode != 0 and "permission denied" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage", "empty", "corrupt-sif"])
def test_bad_images(run, busybox_sif, shared_tmp, damage):
    bad = shared_tmp / f"bad-{damage}.sif"
    data = busybox_sif.read_bytes()
    if damage == "truncated":
        bad.write_bytes(data[:len(data) // 2])
    elif damage == "garbage":
        bad.write_bytes(os.urandom(100000))
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "corrupt-sif":
        b = bytearray(data)
        b[96:104] = (1 << 40).to_bytes(8, "little")  # descriptor table offset beyond the end
        bad.write_bytes(bytes(b))
    if bad.exists():
        bad.chmod(0o644)
    r = run("exec", bad, "true")
    assert r.returncode not in (0, 255), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert str(bad.name) in r.stderr or "not found" in r.stderr


def test_unreadable_image(hpccont_user, busybox_sif, shared_tmp):
    img = shared_tmp / "private.sif"
    img.write_bytes(busybox_sif.read_bytes())
    img.chmod(0o600)
    r = hpccont_user("exec", img, "true")
    assert r.returncode != 0 and "permission denied" in r.stderr


def test_environment(run, busybox_sif, shared_tmp):
    envfile = shared_tmp / "envfile"
    envfile.write_text("FROM_FILE=file\nIMAGE_VAR=overridden-by-file\n")
    envfile.chmod(0o644)
    r = run("exec", "--env", "A=1", "--env-file", envfile, busybox_sif, "sh", "-c",
            'echo "$A|$B|$FROM_FILE|$IMAGE_VAR|$HOSTVAR|$HPCCONT_NAME|$PATH"',
            env={"HPCCONT_ENV_B": "2", "HOSTVAR": "h"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1|2|file|overridden-by-file|h|busybox.sif|/bin:/usr/bin:/sbin:/usr/sbin"
    r = run("exec", "--cleanenv", busybox_sif, "sh", "-c", 'echo "[$HOSTVAR]$IMAGE_VAR"',
            env={"HOSTVAR": "h"})
    assert r.stdout.strip() == "[]from-image"


def test_run_test_and_executable_image(run, busybox_sif, install, shared_tmp):
    r = run("run", busybox_sif, "a b", "c")
    assert r.returncode == 0 and r.stdout.strip() == "runscript args: a b c", r.stderr
    r = run("test", busybox_sif)
    assert r.returncode == 0 and r.stdout.strip() == "test-ok"
    r = run("shell", busybox_sif, input="echo in-shell $((6*7))\n")
    assert "in-shell 42" in r.stdout
    # ./image.sif args: the kernel runs '/usr/bin/env run-singularity image.sif args'
    env = {"PATH": f"{install['bin']}:/usr/bin:/bin"}
    r = subprocess.run([str(busybox_sif), "x", "y"], capture_output=True, text=True, env=env,
                       timeout=60) if run.uid == 0 else helpers.as_user([str(busybox_sif), "x", "y"], env=env)
    assert r.returncode == 0 and r.stdout.strip() == "runscript args: x y", r.stderr


def test_signals_reach_command_and_pid_is_kept(run, busybox_sif, install, test_user):
    script = 'trap "echo got-term; exit 7" TERM; echo $$; while :; do sleep 0.1; done'
    argv = [install["hpccont"], "exec", str(busybox_sif), "sh", "-c", script]
    if run.uid != 0:
        argv = ["setpriv", f"--reuid={test_user.pw_uid}", f"--regid={test_user.pw_gid}",
                "--clear-groups", "env", f"HOME={test_user.pw_dir}"] + argv
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/tmp")
    pid_inside = p.stdout.readline().strip()
    assert pid_inside == str(p.pid), "hpccont must exec the command in place (same PID)"
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 7 and "got-term" in out, err
    _no_leftovers(busybox_sif)


def test_command_gets_default_sigpipe(run, busybox_sif):
    """The interpreter ignores SIGPIPE and SIGXFSZ; the command must not inherit that (what
    the caller ignores, as nohup does SIGHUP, it keeps)."""
    r = run("exec", busybox_sif, "sh", "-c",
            'grep SigIgn /proc/self/status; yes | head -n 2 >/dev/null; echo done')
    assert r.returncode == 0, r.stderr
    label, mask, done = r.stdout.split()
    assert (label, done) == ("SigIgn:", "done")
    assert int(mask, 16) & (1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1)) == 0, mask


def test_cgroup_is_the_callers(run, busybox_sif):
    r = run("exec", busybox_sif, "cat", "/proc/self/cgroup")
    assert r.returncode == 0
    mine = Path("/proc/self/cgroup").read_text()
    assert r.stdout == mine


def test_join_shares_one_container(run, busybox_sif, install, test_user, shared_tmp):
    key = f"test-{os.getpid()}-{run.name}"
    cmd = [install["hpccont"], "exec", "--join", key, str(busybox_sif), "sh", "-c",
           "readlink /proc/self/ns/mnt; sleep 1"]
    if run.uid != 0:
        cmd = ["setpriv", f"--reuid={test_user.pw_uid}", f"--regid={test_user.pw_gid}",
               "--clear-groups", "env", f"HOME={test_user.pw_dir}"] + cmd
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd="/tmp") for _ in range(4)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(outs)) == 1 and outs[0] != os.readlink("/proc/self/ns/mnt")
    _no_leftovers(busybox_sif)      # the keeper leaves (after its grace second) with its tasks


def test_dry_run_prints_plan(run, busybox_sif):
    import json
    r = run("exec", "--dry-run", "-B", "/tmp:/data", busybox_sif, "true")
    plan = json.loads(r.stdout)
    assert plan["mode"] == ("root" if run.uid == 0 else "rootless")
    assert plan["image"]["kind"] == "sif" and plan["image"]["offset"] > 0
    assert any(m["target"] == "/data" for m in plan["mounts"])


def test_fuse_overlayfs_and_forced_rootless(run, busybox_sif, shared_tmp):
    """Site config: fuse-overlayfs instead of kernel overlayfs (kernels before 5.11), and the
    unprivileged path for root too (``runtime.rootless: always``)."""
    cfg = shared_tmp / "site.yaml"
    cfg.write_text("runtime:\n  overlay: fuse-overlayfs\n  rootless: always\n")
    cfg.chmod(0o644)
    env = {"HPCCONT_CONFIG": str(cfg)}
    r = run("exec", "--writable-tmpfs", "-B", f"{shared_tmp}:/scratch", busybox_sif, "sh", "-c",
            "awk '$5 == \"/\" {print $8}' /proc/self/mountinfo; touch /new && echo writable; "
            "ls -d /scratch; id -u", env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.split() == ["fuse.fuse-overlayfs", "writable", "/scratch", str(run.uid)]
    r = run("exec", busybox_sif, "touch", "/new", env=env)
    assert r.returncode != 0 and "Read-only file system" in r.stderr
    r = run("exec", "--dry-run", busybox_sif, "true", env=env)
    assert '"mode": "rootless"' in r.stdout
    _no_leftovers(busybox_sif)
