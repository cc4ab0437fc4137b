"""The PBS hooks run as root on the MoM; every job's user is taken to be an attacker.

Each test plants, as the real unprivileged user ``hpcuser``, what an attacker would: a
preloaded library (built with cc, its constructor logs getuid()), fake programs first on PATH,
a sitecustomize.py on PYTHONPATH, a FIFO or a root-only file as the image, a FIFO swapped in
once the image has been read, a symlink swapped in for the job's directory while execjob_end
waits for the job's processes.  It then runs the hook file as MoM would (harness pbs_python)
and checks that nothing planted ran or was read as root, and that refusals are one line.

The attack environment is put both in the job's environment (Variable_List, the task's
event.env) and in the hook process's own ``os.environ`` (harness "hook_environ"): whatever
the hook was handed, a program it starts as root must not inherit any of it.
"""
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pbslib import DEFAULT_JOB_ID, job_user

JOB = DEFAULT_JOB_ID
pytestmark = [pytest.mark.root, pytest.mark.rootless]

PLANTED_C = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void planted(void)
{
    char exe[256] = "";
    FILE *f = fopen(LOG, "a");
    readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (f) { fprintf(f, "%d %d preload %s\n", (int)getuid(), (int)geteuid(), exe); fclose(f); }
}
"""
# names a root hook could conceivably run through a PATH lookup
FAKE_PROGRAMS = ("hpccont", "python3", "python", "gpg", "gpgconf", "head", "cat", "sh", "env",
                 "mount", "umount", "fusermount", "squashfuse", "unsquashfs", "id", "kill")


@pytest.fixture(autouse=True)
def _needs_root():
    if os.geteuid() != 0:
        pytest.skip("the attacks are on code that runs as root")


@pytest.fixture
def attacker():
    return pwd.getpwnam(job_user())


def chown_tree(path: Path, pw) -> None:
    for p in [path, *path.rglob("*")]:
        os.lchown(p, pw.pw_uid, pw.pw_gid)


def as_attacker(pw):
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


@pytest.fixture
def trap(shared_tmp):
    """(log, uids): every planted thing appends "UID EUID what" to the log."""
    log = shared_tmp / "planted.log"
    log.write_text("")
    log.chmod(0o666)

    def uids():
        return {int(x) for line in log.read_text().splitlines() for x in line.split()[:2]}
    return log, uids


@pytest.fixture
def planted(shared_tmp, trap, attacker):
    """The attacker's environment: LD_PRELOAD / LD_LIBRARY_PATH to a library of theirs, their
    fake programs first on PATH, their sitecustomize on PYTHONPATH, their TMPDIR and cache.
    Checked to work (as the attacker) before it is used."""
    log, uids = trap
    root = shared_tmp / "attacker"
    bindir, pydir, libdir = root / "bin", root / "py", root / "lib"
    for d in (bindir, pydir, libdir):
        d.mkdir(parents=True)
    src = libdir / "planted.c"
    src.write_text(PLANTED_C)
    so = libdir / "libplanted.so"
    subprocess.run(["cc", "-shared", "-fPIC", f'-DLOG="{log}"', "-o", str(so), str(src)],
                   check=True)
    for name in FAKE_PROGRAMS:
        fake = bindir / name
        fake.write_text(f'#!/bin/sh\necho "$(/usr/bin/id -ru) $(/usr/bin/id -u) fake {name}" >> {log}\n'
                        f'exit 0\n')
        fake.chmod(0o755)
    (pydir / "sitecustomize.py").write_text(
        "import os\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(f'{os.getuid()} {os.geteuid()} sitecustomize\\n')\n")
    chown_tree(root, attacker)
    env = {"LD_PRELOAD": str(so), "LD_LIBRARY_PATH": str(libdir),
           "PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": str(pydir),
           "PYTHONSTARTUP": str(pydir / "sitecustomize.py"), "TMPDIR": str(root),
           "XDG_CACHE_HOME": str(root), "HOME": str(root), "GNUPGHOME": str(root),
           "HPCCONT_CONFIG": str(root / "hpccont.yaml")}
    # the plant works: as the attacker, each piece runs
    clean = {"PATH": "/usr/bin:/bin"}
    for argv, extra in ((["/bin/true"], {"LD_PRELOAD": str(so)}),
                        (["head", "-c0", "/dev/null"], {"PATH": env["PATH"]}),
                        ([sys.executable, "-c", "pass"], {"PYTHONPATH": str(pydir)})):
        subprocess.run(argv, env=dict(clean, **extra), check=True, **as_attacker(attacker))
    assert {"preload", "fake", "sitecustomize"} <= {line.split()[2] for line in
                                                   log.read_text().splitlines()}
    assert uids() == {attacker.pw_uid}
    log.write_text("")
    return env


@pytest.fixture
def signed_image(hpccont, busybox_sif, tmp_path, shared_tmp, attacker):
    """(image owned by the attacker, signed by the site key; site config requiring it)."""
    assert hpccont("key", "newpair", "--out", tmp_path / "site").returncode == 0
    image = shared_tmp / "userdir" / "signed.sif"
    image.parent.mkdir()
    image.write_bytes(busybox_sif.read_bytes())
    assert hpccont("sign", "--key", tmp_path / "site.pem", image).returncode == 0
    chown_tree(image.parent, attacker)
    site = {"signatures": {"require": True, "keyring": [str(tmp_path / "site.pub.pem")]}}
    return image, site


def pip_style_launcher(install, where: Path) -> str:
    """An ``hpccont`` as pip writes it: the interpreter without -I (PYTHONPATH honoured)."""
    import sysconfig
    where.mkdir(parents=True, exist_ok=True)
    path = where / "hpccont"
    path.write_text(f"#!{sys.executable}\nimport sys\n"
                    f"sys.path[0:0] = {[install['lib'], sysconfig.get_paths()['purelib']]!r}\n"
                    "from hpccont.cli.main import main\nsys.exit(main())\n")
    path.chmod(0o755)
    return str(path)


def refused_one_line(out, *fragments):
    assert out["accepted"] is False, out
    msg = out["reject_msg"]
    for fragment in fragments:
        assert fragment in msg, msg
    assert "\n" not in msg and "Traceback" not in msg and out["exception"] is None, out


def hook_event(run_hook, event, image, attack_env, **kw):
    """execjob_begin with the image in the job's request, or execjob_launch with it in the
    task's environment only (so the task's image gets the full check, signature included)."""
    if event == "execjob_begin":
        return run_hook(event, variables={**attack_env, "HPCCONT_CONTAINER": str(image)},
                        hook_environ=attack_env, **kw)
    return run_hook(event, variables=dict(attack_env), hook_environ=attack_env,
                    env={**attack_env, "HPCCONT_CONTAINER": str(image), "PBS_TASKNUM": "2"},
                    progname="/bin/true", argv=["true"], **kw)


EVENTS = ["execjob_begin", "execjob_launch"]


# ------------------------------------------------------------ what root runs, and with what

@pytest.mark.parametrize("event", EVENTS)
@pytest.mark.parametrize("verifier", ["pip-style hpccont", "site verify_command"])
def test_nothing_of_the_job_runs_in_the_root_signature_check(run_hook, install, planted, trap,
                                                           signed_image, tmp_path, event,
                                                           verifier):
    """The signature check is the one program the hooks start as root.  With the preloaded
    library, the fake programs, PYTHONPATH and the rest in the job's and the hook's
    environment, the check still verifies the image, and nothing planted runs at all."""
    log, uids = trap
    image, site = signed_image
    if verifier == "pip-style hpccont":
        config = {"hpccont": pip_style_launcher(install, tmp_path / "pip-bin")}
    else:
        # a site's own check that names programs without a path
        config = {"verify_command": ["/bin/sh", "-c", 'head -c 4 "$0" | cat >/dev/null']}
    out = hook_event(run_hook, event, image, planted, site=site, config=config)
    assert out["accepted"], out
    assert 0 not in uids(), log.read_text()
    assert log.read_text() == "", log.read_text()


def test_the_root_check_gets_a_fixed_environment_and_the_descriptor(run_hook, planted,
                                                                    signed_image, tmp_path):
    """Exactly the environment the code chooses; the image as /proc/self/fd/N, an argument."""
    image, site = signed_image
    seen = tmp_path / "seen"
    config = {"verify_command": ["/bin/sh", "-c",
                                 f'/usr/bin/env > {seen}; echo "$#:$0" >> {seen}; '
                                 f'/usr/bin/readlink "$0" >> {seen}']}
    out = hook_event(run_hook, "execjob_begin", image, planted, site=site, config=config)
    assert out["accepted"], out
    lines = seen.read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines[:-2])
    env.pop("PWD", None)            # set by the shell itself
    assert env == {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "LC_ALL": "C",
                   "HPCCONT_CONFIG": env["HPCCONT_CONFIG"]}
    assert env["HPCCONT_CONFIG"] != planted["HPCCONT_CONFIG"]
    assert lines[-2].startswith("0:/proc/self/fd/")
    assert lines[-1] == str(image)


def test_site_config_never_comes_from_the_hook_environment(monkeypatch, planted):
    """A hook config without site_config reads the default file, not $HPCCONT_CONFIG."""
    from hpccont.schedulers import pbs as hp
    Path(planted["HPCCONT_CONFIG"]).write_text("images:\n  allowed_dirs: [/attacker]\n")
    monkeypatch.setenv("HPCCONT_CONFIG", planted["HPCCONT_CONFIG"])
    site = hp.load_site_config(hp.HookConfig())
    assert site["images"]["allowed_dirs"] != ["/attacker"]


# ------------------------------------------------------------ what root reads

@pytest.fixture
def root_only(busybox_squashfs, shared_tmp, attacker):
    """Images the attacker may name but not read: a valid squashfs and a secret, both root's
    and 0600; a symlink of the attacker's to the secret; an image in a 0700 directory."""
    d = shared_tmp / "root-only"
    d.mkdir()
    d.chmod(0o755)
    image = d / "licensed.sqsh"
    shutil.copy(busybox_squashfs, image)
    secret = d / "shadow"
    secret.write_text("root:$6$secret:19000:0:99999:7:::\n")
    private = d / "private"
    private.mkdir(mode=0o700)
    shutil.copy(busybox_squashfs, private / "hidden.sqsh")
    for p in (image, secret):
        p.chmod(0o600)
    mine = shared_tmp / "mine"
    mine.mkdir()
    (mine / "link.sqsh").symlink_to(secret)
    chown_tree(mine, attacker)
    return {"root-only image": image, "root-only secret": secret,
            "attacker's symlink to it": mine / "link.sqsh",
            "image in a 0700 directory": private / "hidden.sqsh"}


@pytest.mark.parametrize("event", EVENTS)
@pytest.mark.parametrize("which", ["root-only image", "root-only secret",
                                   "attacker's symlink to it", "image in a 0700 directory"])
def test_a_root_only_file_is_never_read_for_the_user(run_hook, root_only, planted, event, which):
    image = root_only[which]
    out = hook_event(run_hook, event, image, planted,
                     site={"images": {"allowed_dirs": [str(image.parent), str(image.parents[1])]}})
    refused_one_line(out, "Permission denied")
    if event == "execjob_begin":
        assert out["delete"]


@pytest.mark.parametrize("event", EVENTS)
@pytest.mark.parametrize("how", ["fifo", "symlink to a fifo"])
def test_a_fifo_as_image_is_refused_at_once(run_hook, shared_tmp, attacker, planted, event, how):
    d = shared_tmp / "fifo"
    d.mkdir()
    os.mkfifo(d / "image.sif")
    (d / "link.sif").symlink_to("image.sif")
    chown_tree(d, attacker)
    image = d / ("image.sif" if how == "fifo" else "link.sif")
    started = time.monotonic()
    out = hook_event(run_hook, event, image, planted, timeout=60)
    assert time.monotonic() - started < 30
    refused_one_line(out, "not a regular file or a directory")


SWAPPER = r"""
import ctypes, os, sys, time
image, ready, log = sys.argv[1:4]
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
if fd < 0 or libc.inotify_add_watch(fd, image.encode(), 0x10) < 0:   # IN_CLOSE_NOWRITE
    sys.exit("inotify: " + os.strerror(ctypes.get_errno()))
open(ready, "w").close()
os.read(fd, 4096)                 # someone has read the image and closed it
os.mkfifo(image + ".tmp")
os.rename(image + ".tmp", image)  # ... and now it is a FIFO
with open(log, "a") as f:
    f.write("swapped\n")
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        w = os.open(image, os.O_WRONLY | os.O_NONBLOCK)   # succeeds only once a reader waits
    except OSError:
        time.sleep(0.005)
        continue
    with open(log, "a") as f:
        f.write("reader\n")
    os.write(w, b"not a SIF" * 100)
    os.close(w)
    break
"""


def test_the_image_is_read_once_a_fifo_swapped_in_later_is_never_opened(run_hook, planted,
                                                                       signed_image, shared_tmp,
                                                                       attacker):
    """The attacker waits until the image has been read once, then renames a FIFO over it.
    Root must not open the path again (the signature check reads the descriptor)."""
    image, site = signed_image
    script = shared_tmp / "swapper.py"
    script.write_text(SWAPPER)
    ready, log = shared_tmp / "ready", shared_tmp / "swap.log"
    log.write_text("")
    log.chmod(0o666)
    swapper = subprocess.Popen([sys.executable, "-I", str(script), str(image), str(ready), str(log)],
                               **as_attacker(attacker))
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert swapper.poll() is None and time.monotonic() < deadline, "swapper did not start"
            time.sleep(0.02)
        out = hook_event(run_hook, "execjob_begin", image, planted, site=site, timeout=90)
        time.sleep(0.3)                  # a late reader would have shown up by now
        assert "reader" not in log.read_text(), "root opened the swapped-in FIFO"
        assert out["accepted"], out
    finally:
        swapper.kill()
        swapper.wait()


# ------------------------------------------------------------ job-end cleanup

def _swapping_leftover(pw, trap_script: str, ready: Path):
    """A process of the job's user, marked with the job id, that runs ``trap_script`` when
    execjob_end sends it SIGTERM (the grace period), then exits."""
    script = (f'trap \'{trap_script}; exit 0\' TERM; : > "{ready}"; '
              'while :; do /bin/sleep 0.05; done')
    env = {"PATH": "/usr/bin:/bin", "HPCCONT_PBS_JOBID": JOB}
    p = subprocess.Popen(["/bin/sh", "-c", script], env=env, start_new_session=True,
                         **as_attacker(pw))
    deadline = time.monotonic() + 10
    while not ready.exists():
        assert p.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    return p


def _mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def test_end_never_unmounts_through_a_symlink_swapped_in_during_the_grace_period(
        run_hook, shared_tmp, attacker):
    """The job leaves a mount under ``~/pbs-JOB``; while its process is being stopped the user
    moves that directory away and puts a symlink to another directory in its place.  Root must
    not unmount what the symlink leads to."""
    home = shared_tmp / "home"
    jobdir = home / "pbs-4242.pbsserver"
    (jobdir / "mnt").mkdir(parents=True)
    chown_tree(home, attacker)
    victim = shared_tmp / "victim"
    (victim / "mnt").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "victim", str(victim / "mnt")], check=True)
    (victim / "mnt" / "precious").write_text("keep me\n")
    # stands in for the FUSE mount a job leaves behind in its own directory
    subprocess.run(["mount", "-t", "tmpfs", "job", str(jobdir / "mnt")], check=True)
    p = None
    try:
        p = _swapping_leftover(attacker, f'mv "{jobdir}" "{jobdir}.old"; ln -s "{victim}" "{jobdir}"',
                               shared_tmp / "ready")
        out = run_hook("execjob_end")
        assert out["accepted"], out
        assert p.wait(timeout=10) is not None
        assert jobdir.is_symlink(), "the swap did not happen: the test proves nothing"
        assert _mounted(victim / "mnt"), "root unmounted through the user's symlink"
        assert (victim / "mnt" / "precious").read_text() == "keep me\n"
        assert not _mounted(Path(f"{jobdir}.old") / "mnt")    # the job's own mount went
    finally:
        if p and p.poll() is None:
            p.kill()
        for point in (victim / "mnt", Path(f"{jobdir}.old") / "mnt", jobdir / "mnt"):
            subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_end_never_removes_through_a_symlink_swapped_in_during_the_grace_period(
        shared_tmp, attacker, tmp_path):
    """The job's state lives in a directory of the user's; during the grace period the user
    replaces that directory with a symlink to a root directory holding an entry of the same
    name.  Root must not delete it."""
    from hpccont.schedulers import pbs as hp
    state = shared_tmp / "state"
    (state / "pbs-4242.pbsserver").mkdir(parents=True)
    (state / "pbs-4242.pbsserver" / "junk").write_text("")
    chown_tree(state, attacker)
    victim = shared_tmp / "rootstate"
    (victim / "pbs-4242.pbsserver").mkdir(parents=True)
    (victim / "pbs-4242.pbsserver" / "precious").write_text("keep me\n")
    p = _swapping_leftover(attacker, f'mv "{state}" "{state}.old"; ln -s "{victim}" "{state}"',
                           shared_tmp / "ready")
    try:
        plan = hp.plan_cleanup(JOB, {"runtime": {"state_dir": str(tmp_path / "none")}},
                               extra_dirs=[str(state)], uid=attacker.pw_uid)
        assert plan.paths == [str(state / "pbs-4242.pbsserver")] and plan.pids
        problems = hp.apply_cleanup(plan, grace=5)
        assert state.is_symlink(), "the swap did not happen: the test proves nothing"
        assert (victim / "pbs-4242.pbsserver" / "precious").read_text() == "keep me\n"
        assert any("symbolic link" in m for m in problems), problems
        assert all("\n" not in m for m in problems)
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_end_removes_in_the_users_directories_with_the_users_rights(shared_tmp, attacker,
                                                                    tmp_path):
    """A removal in a directory the user owns runs as the user: a root-owned directory the
    user placed... or that was placed there for them keeps its root-owned content."""
    from hpccont.schedulers import pbs as hp
    state = shared_tmp / "ustate"
    job = state / "pbs-4242.pbsserver"
    (job / "sub").mkdir(parents=True)
    (job / "sub" / "mine").write_text("")
    (job / "link").symlink_to("/etc")
    chown_tree(state, attacker)
    rootdir = job / "rootdir"
    rootdir.mkdir()
    (rootdir / "roots").write_text("")        # root's, in a root directory: not the user's to remove
    plan = hp.plan_cleanup(JOB, {"runtime": {"state_dir": str(tmp_path / "none")}},
                           extra_dirs=[str(state)], uid=attacker.pw_uid)
    problems = hp.apply_cleanup(plan, grace=1)
    assert (rootdir / "roots").exists(), "root removed a file in the user's tree"
    assert not (job / "sub").exists() and not (job / "link").is_symlink()
    assert os.path.isdir("/etc")
    assert any("roots" in m or "rootdir" in m or "Permission denied" in m for m in problems), problems


def test_end_leaves_other_users_processes_carrying_the_marker(run_hook, attacker):
    """A process carrying the job's marker but running as someone else is not the job's."""
    env = {"PATH": "/usr/bin:/bin", "HPCCONT_PBS_JOBID": JOB}
    other = subprocess.Popen(["/bin/sleep", "300"], env=env, start_new_session=True)   # root's
    mine = subprocess.Popen(["/bin/sleep", "300"], env=env, start_new_session=True,
                            **as_attacker(attacker))
    try:
        out = run_hook("execjob_end")
        assert out["accepted"], out
        assert mine.wait(timeout=10) is not None
        assert other.poll() is None
    finally:
        for p in (other, mine):
            p.kill()
            p.wait()


# ------------------------------------------------------------ the primitives

def test_descriptor_walk_refuses_symlinks_and_strangers(shared_tmp, attacker):
    from hpccont.runtime import cleanup
    real = shared_tmp / "real" / "sub"
    real.mkdir(parents=True)
    (shared_tmp / "link").symlink_to(shared_tmp / "real")
    fd = cleanup.open_dir(str(real))
    os.close(fd)
    with pytest.raises(cleanup.UnsafePath, match="symbolic link"):
        cleanup.open_dir(str(shared_tmp / "link" / "sub"))
    os.chown(real, attacker.pw_uid, attacker.pw_gid)
    with pytest.raises(cleanup.UnsafePath, match=f"belongs to uid {attacker.pw_uid}"):
        cleanup.open_dir(str(real))
    os.close(cleanup.open_dir(str(real), owners=(0, attacker.pw_uid)))


def test_detach_goes_through_the_descriptor(shared_tmp):
    from hpccont.runtime import cleanup
    real = shared_tmp / "real"
    (real / "m").mkdir(parents=True)
    (shared_tmp / "link").symlink_to(real)
    subprocess.run(["mount", "-t", "tmpfs", "t", str(real / "m")], check=True)
    try:
        with pytest.raises(cleanup.UnsafePath):
            cleanup.detach(str(shared_tmp / "link" / "m"))
        assert _mounted(real / "m")
        (real / "l").symlink_to("m")
        with pytest.raises(OSError):           # UMOUNT_NOFOLLOW: a symlinked last component
            cleanup.detach(str(real / "l"))
        assert _mounted(real / "m")
        cleanup.detach(str(real / "m"))
        assert not _mounted(real / "m")
    finally:
        subprocess.run(["umount", "-l", str(real / "m")], capture_output=True)


def test_remove_at_follows_no_symlink_and_enters_no_mount(shared_tmp):
    from hpccont.runtime import cleanup
    outside = shared_tmp / "outside"
    outside.mkdir()
    (outside / "keep").write_text("")
    tree = shared_tmp / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("")
    (tree / "a" / "to-outside").symlink_to(outside)
    (tree / "bound").mkdir()
    subprocess.run(["mount", "--bind", str(outside), str(tree / "bound")], check=True)
    fd = cleanup.open_dir(str(shared_tmp))
    try:
        with pytest.raises(cleanup.UnsafePath, match="mount point"):
            cleanup.remove_at(fd, "tree")
        subprocess.run(["umount", str(tree / "bound")], check=True)
        cleanup.remove_at(fd, "tree")
    finally:
        os.close(fd)
        subprocess.run(["umount", "-l", str(tree / "bound")], capture_output=True)
    assert not tree.exists()
    assert (outside / "keep").exists()


def test_python_run_as_root_is_isolated(tmp_path):
    from hpccont.schedulers import pbs as hp
    from hpccont.errors import ConfigError
    assert hp.root_command(["/usr/bin/python3", "/opt/v.py"]) == ["/usr/bin/python3", "-I", "/opt/v.py"]
    assert hp.root_command(["/usr/bin/python3", "-I", "/opt/v.py"])[1:2] == ["-I"]
    ours = tmp_path / "ours"
    ours.write_text("#!/opt/venv/bin/python -IS\n")
    assert hp.root_command([str(ours), "verify"]) == ["/opt/venv/bin/python", "-IS", str(ours), "verify"]
    pip = tmp_path / "pip"
    pip.write_text("#!/opt/venv/bin/python3.11\n")
    assert hp.root_command([str(pip), "verify"]) == ["/opt/venv/bin/python3.11", "-I", str(pip), "verify"]
    envpy = tmp_path / "envpy"
    envpy.write_text("#!/usr/bin/env python3\n")
    argv = hp.root_command([str(envpy)])
    assert os.path.isabs(argv[0]) and argv[1] == "-I" and argv[2] == str(envpy)
    shell = tmp_path / "shell"
    shell.write_text("#!/bin/sh\n")
    assert hp.root_command([str(shell), "x"]) == [str(shell), "x"]
    with pytest.raises(ConfigError, match="absolute path"):
        hp.root_command(["hpccont", "verify"])
    with pytest.raises(ConfigError, match="verify_command must start with an absolute path"):
        hp.parse_hook_config({"verify_command": ["apptainer", "verify"]})
