"""--contain, --containall and the site's ``mounts.dev: minimal`` give Apptainer's minimal /dev,
as the unprivileged test user through the ``apptainer`` name.

Apptainer (its container_linux.go, addDevMount; apptainer.conf ``mount dev``): a fresh /dev
holding only tty, null, zero, random and urandom bound from the host, a tmpfs /dev/shm (1777),
a private devpts instance at /dev/pts with /dev/ptmx pointing into it, the fd, stdin, stdout
and stderr links, /dev/console bound to the caller's terminal when there is one, /dev/mqueue
when the container has its own IPC namespace, and whatever devices were asked for on top."""
import os

import pytest

pytestmark = pytest.mark.rootless

MINIMAL = {"fd", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty",
           "urandom", "zero"}


def listing(run, image, *flags, **kw):
    r = run("exec", *flags, image, "ls", "-A", "/dev", **kw)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def test_contain_gives_the_minimal_dev(as_apptainer, bash_sif):
    assert listing(as_apptainer, bash_sif, "--contain") == MINIMAL
    # without --contain the host's /dev is there (the FUSE device the tests made usable)
    assert "fuse" in listing(as_apptainer, bash_sif)


def test_minimal_dev_nodes_work(as_apptainer, bash_sif):
    script = (
        "echo gone > /dev/null && echo null-ok; "
        "head -c 16 /dev/urandom | wc -c; head -c 8 /dev/random | wc -c; "
        "head -c 4 /dev/zero | od -An -tx1 | tr -d ' \\n'; echo; "
        "stat -c '%a %F' /dev/shm; echo data > /dev/shm/f && cat /dev/shm/f; "
        "for l in ptmx fd stdin stdout stderr; do readlink /dev/$l; done; "
        "for n in null zero random urandom tty; do [ -c /dev/$n ] || echo not-char-$n; done; "
        "grep ' /dev/pts ' /proc/self/mountinfo | grep -c ' - devpts '; "
        "grep ' /dev ' /proc/self/mountinfo | grep -c ' - tmpfs '; "
        "exec 3<>/dev/ptmx && ls /dev/pts")
    r = as_apptainer("exec", "--contain", bash_sif, "bash", "-c", script)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:4] == ["null-ok", "16", "8", "00000000"], r.stdout
    assert lines[4] == "1777 directory" and lines[5] == "data"
    assert lines[6:11] == ["pts/ptmx", "/proc/self/fd", "/proc/self/fd/0", "/proc/self/fd/1",
                           "/proc/self/fd/2"]
    assert lines[11:13] == ["1", "1"], r.stdout         # a devpts of its own, /dev a tmpfs
    # a new devpts instance: only the terminal just opened, none of the host's
    assert lines[13:] == ["0", "ptmx"], r.stdout


def test_host_terminals_are_not_visible(as_apptainer, bash_sif):
    """A terminal open on the host shows in the host's /dev/pts, never in the container's."""
    leader, follower = os.openpty()
    try:
        number = os.path.basename(os.ttyname(follower))
        assert os.path.exists(f"/dev/pts/{number}")
        r = as_apptainer("exec", "--contain", bash_sif, "ls", "/dev/pts")
        assert r.stdout.split() == ["ptmx"], r.stdout + r.stderr
    finally:
        os.close(leader)
        os.close(follower)


def test_console_is_the_callers_terminal(as_apptainer, bash_sif):
    leader, follower = os.openpty()
    try:
        r = as_apptainer("exec", "--contain", bash_sif, "sh", "-c",
                         "[ -c /dev/console ] && echo console-char >&2", stdin=follower)
        assert r.returncode == 0 and "console-char" in r.stderr, r.stderr
    finally:
        os.close(leader)
        os.close(follower)


def test_containall_adds_mqueue_of_its_own_ipc_namespace(as_apptainer, bash_sif):
    assert listing(as_apptainer, bash_sif, "--containall") == MINIMAL | {"mqueue"}
    r = as_apptainer("exec", "--containall", bash_sif, "sh", "-c",
                     "grep ' /dev/mqueue ' /proc/self/mountinfo | grep -c ' - mqueue '")
    assert r.stdout.strip() == "1", r.stdout + r.stderr


def test_no_mount_and_binds_with_a_minimal_dev(as_apptainer, bash_sif):
    assert listing(as_apptainer, bash_sif, "--contain", "--no-mount", "devpts") == \
        MINIMAL - {"pts", "ptmx"}
    # a device asked for is bound on top of the minimal /dev
    assert listing(as_apptainer, bash_sif, "--contain", "-B", "/dev/fuse") == MINIMAL | {"fuse"}
    # --no-mount dev: no /dev from the host at all (the image's own, empty, directory)
    assert listing(as_apptainer, bash_sif, "--contain", "--no-mount", "dev") == set()


def test_site_minimal_dev_without_contain(as_apptainer, bash_sif, world_tmp):
    """``mounts.dev: minimal`` (Apptainer's ``mount dev = minimal``) without --contain: the host
    home and /tmp stay, /dev is the minimal one; a wrong value is one line."""
    cfg = world_tmp / "minimal-dev.yaml"
    cfg.write_text("mounts:\n  dev: minimal\n")
    cfg.chmod(0o644)
    env = {"HPCCONT_CONFIG": str(cfg)}
    assert listing(as_apptainer, bash_sif, env=env) == MINIMAL
    r = as_apptainer("exec", bash_sif, "sh", "-c", "grep -c ' /tmp ' /proc/self/mountinfo",
                     env=env)
    assert r.stdout.strip() == "1", r.stderr                  # host /tmp still bound
    cfg.write_text("mounts:\n  dev: some\n")
    r = as_apptainer("exec", bash_sif, "true", env=env)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "minimal" in r.stderr, r.stderr
