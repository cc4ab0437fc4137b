"""Shared mounts within a scope (runtime/share.py) and the exec fast path (launcher/fast.c).

Launches of one user with the same mount plan join one container; a repeat launch joins it
from C, applying the recipe Python wrote, with the same environment, directory, ids and mounts
as the Python path.  Everything runs as the unprivileged test user.
"""
import os
import signal
import time
from pathlib import Path

import pytest

import helpers

pytestmark = pytest.mark.timeout(300)

PROBE = ('echo "ns=$(readlink /proc/self/ns/mnt)"; echo "pwd=$(pwd)"; echo "id=$(id)"; '
         'env | sort | sed "s/^/env:/"; cut -d" " -f5 /proc/self/mountinfo | sort | '
         'sed "s/^/mnt:/"')


@pytest.fixture
def image(busybox_squashfs, shared_tmp):
    """A private copy of the image: its keepers are this test's alone."""
    p = helpers.private_copy(busybox_squashfs, shared_tmp / "img.sqsh")
    yield p
    _stop_keepers(p)


def _keepers(image):
    """PIDs of the FUSE servers holding ``image`` open and of their parents, the keepers."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(image):
                    found.append(int(pid))
                    stat = Path(f"/proc/{pid}/stat").read_text()
                    found.append(int(stat.rsplit(")", 1)[1].split()[1]))
                    break
        except OSError:
            continue
    return found


def _none_left(image, seconds=5.0):
    """No process holds the image any more (the FUSE server of a finished launch exits with it,
    a moment later; a keeper left to share would stay for runtime.share_idle_s)."""
    deadline = time.monotonic() + seconds
    while _keepers(image) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _keepers(image)


def _stop_keepers(image):
    for pid in _keepers(image):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _run(hpccont_user, *args, env=None, cwd=None):
    r = hpccont_user(*args, env=env, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _field(out, name):
    return next(line.split("=", 1)[1] for line in out.splitlines() if line.startswith(name + "="))


def _dry(hpccont_user, image, *opts, env=None, cwd=None):
    import json
    return json.loads(_run(hpccont_user, "exec", "--share", "--dry-run", *opts, image,
                           "/bin/true", env=env, cwd=cwd)).get("share")


def test_same_plan_joins_different_binds_do_not(hpccont_user, image, shared_tmp):
    assert _dry(hpccont_user, image)["would_join"] is False
    a = _run(hpccont_user, "exec", "--share", image, "sh", "-c", PROBE)
    b = _run(hpccont_user, "exec", "--share", "--env", "X=1", image, "sh", "-c", PROBE)
    assert _field(a, "ns") == _field(b, "ns")          # joined, though env and argv differ
    assert "env:X=1" in b and "env:X=1" not in a
    info = _dry(hpccont_user, image)
    assert info["would_join"] is True and info["keeper"] in _keepers(image)
    c = _run(hpccont_user, "exec", "--share", "-B", f"{shared_tmp}:/mnt", image, "sh", "-c", PROBE)
    assert _field(c, "ns") != _field(a, "ns")
    d = _run(hpccont_user, "exec", "--no-share", image, "sh", "-c", PROBE)
    assert _field(d, "ns") != _field(a, "ns")
    assert _dry(hpccont_user, image, "--no-share") == {"share": False, "why": "--no-share"}


def test_off_unless_asked_and_site_switch(hpccont_user, image, shared_tmp):
    a = _run(hpccont_user, "exec", image, "readlink", "/proc/self/ns/mnt")
    assert _none_left(image)                            # runtime.share: ask (the default)
    cfg = shared_tmp / "never.yaml"
    cfg.write_text("runtime:\n  share: never\n")
    cfg.chmod(0o644)
    assert _dry(hpccont_user, image, env={"HPCCONT_CONFIG": str(cfg)})["share"] is False
    _run(hpccont_user, "exec", "--share", image, "true", env={"HPCCONT_CONFIG": str(cfg)})
    assert _none_left(image)
    assert a.startswith("mnt:")


def test_another_user_never_joins(hpccont_user, install, image):
    other = helpers.ensure_test_user("hpcshare2")
    a = _run(hpccont_user, "exec", "--share", image, "readlink", "/proc/self/ns/mnt")
    r = helpers.as_user([install["hpccont"], "exec", "--share", str(image), "readlink",
                         "/proc/self/ns/mnt"], user=other.pw_name)
    assert r.returncode == 0, r.stderr
    assert r.stdout != a
    owners = {os.stat(f"/proc/{p}").st_uid for p in _keepers(image)}
    assert owners == {_uid("hpcuser"), other.pw_uid}


def _uid(name):
    import pwd
    return pwd.getpwnam(name).pw_uid


def test_idle_keeper_exits_and_killed_keeper_is_replaced(hpccont_user, image, shared_tmp):
    cfg = shared_tmp / "idle.yaml"
    cfg.write_text("runtime:\n  share: always\n  share_idle_s: 2\n")
    cfg.chmod(0o644)
    env = {"HPCCONT_CONFIG": str(cfg)}
    _run(hpccont_user, "exec", image, "true", env=env)
    keeper = _dry(hpccont_user, image, env=env)["keeper"]
    assert keeper
    os.kill(keeper, signal.SIGKILL)
    out = _run(hpccont_user, "exec", image, "echo", "ok", env=env)
    assert out == "ok\n"
    again = _dry(hpccont_user, image, env=env)["keeper"]
    assert again and again != keeper
    deadline = time.time() + 15
    while time.time() < deadline and _keepers(image):
        time.sleep(0.2)
    assert not _keepers(image), "the idle keeper (share_idle_s: 2) is still there"
    assert not helpers.mounts_mentioning(str(image))


def test_32_concurrent_first_launches_make_one_mount(install, image, test_user, shared_tmp):
    script = shared_tmp / "many.sh"
    script.write_text(
        "#!/bin/sh\ni=0\nwhile [ $i -lt 32 ]; do\n"
        f"  {install['hpccont']} exec --share {image} readlink /proc/self/ns/mnt "
        f"> {shared_tmp}/out.$i 2>&1 &\n  i=$((i+1))\ndone\nwait\n")
    script.chmod(0o755)
    r = helpers.as_user([str(script)], timeout=240)
    assert r.returncode == 0, r.stderr
    outs = {(shared_tmp / f"out.{i}").read_text() for i in range(32)}
    assert len(outs) == 1 and next(iter(outs)).startswith("mnt:["), outs
    keepers = _keepers(image)
    assert len(keepers) == 2, keepers           # one FUSE server, one keeper: one mount


def _wave(entry, n, args, shared_tmp, tag, env=None):
    """``n`` identical launches at once as the test user, in a session of their own, each
    traced for its own execs (not its children's: a keeper would hold strace until it left);
    their outputs and traces."""
    script = shared_tmp / f"wave-{tag}.sh"
    script.write_text(
        "#!/bin/sh\ni=0\nwhile [ $i -lt %d ]; do\n"
        "  strace -qq -e trace=execve -o %s/trace-%s.$i %s %s > %s/out-%s.$i 2>&1 &\n"
        "  i=$((i+1))\ndone\nwait\n" % (n, shared_tmp, tag, entry, " ".join(args), shared_tmp,
                                         tag))
    script.chmod(0o755)
    r = helpers.as_user([str(script)], env=env, timeout=240)
    assert r.returncode == 0, r.stderr
    return ([(shared_tmp / f"out-{tag}.{i}").read_text() for i in range(n)],
            [(shared_tmp / f"trace-{tag}.{i}").read_text() for i in range(n)])


def _pending_files():
    return set(Path(f"/tmp/hpccont-{_uid('hpcuser')}").glob("*.pending"))


def test_first_launches_together_run_python_once(fast, image, test_user, shared_tmp):
    """Eight identical launches at once with no recipe to replay, twice (the second time the
    first wave's recipe names a keeper that has left): fast.c elects one to run Python, which
    mounts and writes the recipe; the others wait for it and join from C."""
    python = f'execve("{fast["py"]}/hpccont"'
    before = _pending_files()
    for wave in ("first", "again"):
        outs, traces = _wave(fast["dir"] / "hpccont", 8, ["exec", str(image), "readlink",
                             "/proc/self/ns/mnt"], shared_tmp, wave, env={"HPCCONT_SHARE": "1"})
        assert len(set(outs)) == 1 and outs[0].startswith("mnt:["), outs
        assert sum(python in t for t in traces) == 1, wave
        _stop_keepers(image)                      # the recipe names a keeper that is gone
        assert _none_left(image)
    assert _pending_files() <= before         # the election's lock files went with the locks


def test_elected_launch_without_a_recipe_lets_the_others_go(fast, image, test_user, shared_tmp):
    """A launch Python never records (--pid: its own PID namespace, Python stays outside as a
    parent) must not hold the others until its command ends: the four commands overlap, each
    still running when all four have started."""
    marks = shared_tmp / "marks"
    marks.mkdir()
    marks.chmod(0o777)
    before = _pending_files()
    probe = f"'mktemp {marks}/m.XXXXXX >/dev/null; sleep 3; ls {marks} | wc -l'"
    outs, traces = _wave(fast["dir"] / "hpccont", 4, ["exec", "--pid", str(image), "sh", "-c",
                         probe], shared_tmp, "pid")
    assert [o.split() for o in outs] == [["4"]] * 4, outs
    assert all(f'execve("{fast["py"]}/hpccont"' in t for t in traces)
    assert _pending_files() <= before


def _pairs(out):
    return sorted(line for line in out.splitlines() if not line.startswith("env:_="))


def test_c_path_gives_the_python_paths_results(fast, image, test_user, shared_tmp):
    """Same environment, working directory, ids and mounts; the strict launcher (no Python
    behind it) proves the second launch took the C path."""
    work = shared_tmp / "work"
    work.mkdir()
    work.chmod(0o777)
    env = {"HPCCONT_SHARE": "1", "FOO": "a b"}
    cmd = ["exec", str(image), "sh", "-c", PROBE]

    def run(entry):
        r = helpers.as_user(["sh", "-c", 'cd "$0" && exec "$@"', str(work), str(entry), *cmd],
                            env=env)
        assert r.returncode == 0, r.stderr
        return r.stdout
    python = run(fast["dir"] / "hpccont")                   # no recipe yet: Python, recording
    c = run(fast["strict"] / "hpccont")
    assert _pairs(c) == _pairs(python)
    assert _field(c, "pwd") == str(work) and "uid=" in _field(c, "id")
    alone = helpers.as_user(["sh", "-c", 'cd "$0" && exec "$@"', str(work),
                             str(fast["dir"] / "hpccont"), "exec", "--no-share", str(image),
                             "sh", "-c", PROBE], env=env)
    strip = [line for line in _pairs(python) if not line.startswith("ns=")]
    assert [line for line in _pairs(alone.stdout) if not line.startswith("ns=")] == strip
    # a different environment has no recipe: the strict launcher cannot take the C path
    r = helpers.as_user(["sh", "-c", 'cd "$0" && exec "$@"', str(work),
                         str(fast["strict"] / "hpccont"), *cmd], env={**env, "FOO": "b"})
    assert r.returncode == 127 and "cannot execute /nonexistent/hpccont" in r.stderr


def test_executable_image_in_a_loop_takes_the_c_path(fast, busybox_sif, test_user, shared_tmp):
    """./tool.sif in a shell loop: after the first start, no Python (the recipe the first
    start wrote is never rewritten, as every Python launch would)."""
    img = helpers.private_copy(busybox_sif, shared_tmp / "tool.sif", 0o755)
    env = {"HPCCONT_SHARE": "1", "PATH": f"{fast['dir']}:/usr/bin:/bin"}
    loop = ["sh", "-c", 'cd "$0" && for f in a b c; do ./tool.sif echo "$f"; done',
            str(shared_tmp)]
    try:
        r = helpers.as_user(loop, env=env)
        assert r.stdout.splitlines() == [f"runscript args: echo {f}" for f in "abc"], r.stderr
        recipes = {p: p.stat().st_ino for p in Path(f"/tmp/hpccont-{_uid('hpcuser')}").glob(
            "fast-*") if str(img).encode() in p.read_bytes()}
        assert len(recipes) == 1
        r = helpers.as_user(loop, env=env)
        assert r.stdout.splitlines() == [f"runscript args: echo {f}" for f in "abc"], r.stderr
        assert {p: p.stat().st_ino for p in recipes} == recipes
    finally:
        _stop_keepers(img)


def test_a_jobs_end_takes_its_keepers(submit, install, image, shared_tmp):
    """On the Slurm test cluster: two launches in a batch job share one keeper, which the
    job's end removes with its FUSE server (the job's cgroup), idle time or not."""
    script = shared_tmp / "job.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"{install['hpccont']} exec --share {image} readlink /proc/self/ns/mnt\n"
        f"{install['hpccont']} exec --share {image} readlink /proc/self/ns/mnt\n"
        f"{install['hpccont']} exec --share --dry-run {image} true | grep '\"keeper\"'\n")
    script.chmod(0o755)
    out = shared_tmp / "job.out"
    r = submit("sbatch", "--wait", "-o", str(out), str(script), timeout=180)
    assert r.returncode == 0, r.stderr + out.read_text()
    lines = out.read_text().splitlines()
    assert lines[0] == lines[1] and lines[0].startswith("mnt:["), lines
    keeper = int(lines[2].split(":")[1].strip().rstrip(","))
    deadline = time.time() + 20
    while time.time() < deadline and (os.path.exists(f"/proc/{keeper}") or _keepers(image)):
        time.sleep(0.2)
    assert not os.path.exists(f"/proc/{keeper}") or \
        Path(f"/proc/{keeper}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    assert not _keepers(image)


def test_joining_works_when_hpccont_is_installed_where_containers_do_not_see(
        site_install, image, test_user, site_tmp):
    """As at a site: the package under /opt-like paths outside every default bind (the test
    install under /tmp would be visible inside and hide a late import)."""
    env = {"PATH": "/usr/bin:/bin"}
    for _ in range(2):
        r = helpers.as_user([site_install["hpccont"], "exec", "--share", str(image), "cat",
                             "/etc/hostname"], env=env, cwd=site_tmp)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["container"]
