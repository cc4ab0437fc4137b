"""Root mode (a site running hpccont as root: loop devices, kernel mounts) on a sandbox its
owner can write: the owner must not be able to redirect root's mounts, or the mount points root
creates, onto the host by swapping a directory for a symbolic link while the launch runs.

Mount points are found by a descriptor walk inside the container's root and mounted through
``/proc/self/fd/N`` (``rootpath.open_mountpoint``, ``runtime/apply.py``): a link seen at any
step is resolved inside the root, and a swap after a step cannot move what the descriptor
names.  Before, a bind destination was resolved to a path string first and created and mounted
by that path, each a lookup of its own that follows links.
"""
import errno
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest

import helpers

pytestmark = pytest.mark.root


@pytest.fixture
def outside():
    """A host directory outside the paths a container here binds (/tmp, /var/tmp, home)."""
    d = f"/run/hpccont-sec-outside-{os.getpid()}"
    os.makedirs(d, exist_ok=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_walk_refuses_a_link_swapped_in_mid_walk(tmp_path, outside, monkeypatch):
    """The race at its worst moment, made deterministic: ``b`` is a directory when its link
    check runs and a link to the host the instant after."""
    from hpccont.rootpath import open_mountpoint
    root = tmp_path / "root"
    (root / "a/b").mkdir(parents=True)
    real_readlink = os.readlink

    def readlink_then_swap(name, *args, **kw):
        try:
            return real_readlink(name, *args, **kw)
        finally:
            if name == "b" and (root / "a/b").is_dir() and not (root / "a/b").is_symlink():
                os.rename(root / "a/b", root / "a/b-moved")
                os.symlink(outside, root / "a/b")
    monkeypatch.setattr(os, "readlink", readlink_then_swap)
    with pytest.raises(OSError) as e:
        open_mountpoint(str(root), "/a/b/new", True)
    assert e.value.errno == errno.ELOOP
    assert os.listdir(outside) == []


def test_descriptor_survives_a_swap(tmp_path, outside):
    """Once found, the mount point is the directory the descriptor names, wherever it moves."""
    from hpccont.rootpath import open_mountpoint
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    fd = open_mountpoint(str(root), "/a/new", True)
    try:
        os.rename(root / "a", root / "a-moved")
        os.symlink(outside, root / "a")
        assert os.readlink(f"/proc/self/fd/{fd}") == str(root / "a-moved/new")
    finally:
        os.close(fd)
    # and a walk through the link now resolves it inside the root
    fd = open_mountpoint(str(root), "/a/other", True)
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") == str(root / outside.lstrip("/") / "other")
    finally:
        os.close(fd)
    assert os.listdir(outside) == []


def test_swapping_user_cannot_redirect_root_mounts(hpccont, busybox_rootfs, shared_tmp,
                                                   test_user, outside):
    """End to end: root launches a sandbox owned by the test user, --writable (the sandbox is
    the root itself) and not, while the user swaps /opt for a link to a host directory as fast
    as they can.  Nothing ever appears in that host directory, and the host's mount table never
    shows it."""
    sandbox = shared_tmp / "sandbox"
    shutil.copytree(busybox_rootfs, sandbox, symlinks=True)
    (sandbox / "opt").mkdir(exist_ok=True)
    subprocess.run(["chown", "-R", f"{test_user.pw_uid}:{test_user.pw_gid}", str(sandbox)],
                   check=True)
    data = shared_tmp / "data"
    data.mkdir()
    swapper = subprocess.Popen(
        ["runuser", "-u", helpers.TEST_USER, "--", "/usr/bin/python3", "-c", SWAPPER,
         str(sandbox), outside], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    results = []
    try:
        time.sleep(0.2)
        for i in range(12):
            extra = ["--writable"] if i % 2 else []
            r = hpccont("exec", *extra, "-B", f"{data}:/opt/d{i}/sub", "-B", f"{data}:/opt/f{i}",
                        sandbox, "true", timeout=60)
            results.append(r.returncode)
            assert "Traceback" not in r.stderr, r.stderr
            assert os.listdir(outside) == [], (i, r.stderr)
            assert not helpers.mounts_mentioning(outside)
    finally:
        # The whole group: a SIGKILL to runuser alone left its Python child swapping (a CPU)
        # for the rest of the test run.
        os.killpg(swapper.pid, signal.SIGKILL)
        swapper.wait()
    assert os.listdir(outside) == []
    assert 0 in results, results            # the launches did run, not only fail


# As the sandbox's owner: /opt and a link to the host directory exchanged in a loop, atomically
# (renameat2 RENAME_EXCHANGE: one of the two is always there, so root's walk never makes it).
SWAPPER = r"""
import ctypes, os, sys
sandbox, outside = sys.argv[1], sys.argv[2]
opt, link = os.path.join(sandbox, "opt").encode(), os.path.join(sandbox, "opt-link").encode()
try:
    os.symlink(outside, link)
except FileExistsError:
    pass
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
while True:
    libc.renameat2(AT_FDCWD, opt, AT_FDCWD, link, RENAME_EXCHANGE)
"""
