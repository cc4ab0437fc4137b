"""What an image's files could grant, refused: setuid-root and file-capability programs, device
nodes, writes into the image.

Why each holds: the image is mounted nosuid and nodev (squashfuse or the loop device, the
overlay, every bind remounted nosuid); the command runs with PR_SET_NO_NEW_PRIVS, so no exec
can raise its privileges; the unprivileged user's namespace maps only their own uid, so a
setuid-root file is owned by an unmapped uid; the image and its overlay are read-only unless
--writable-tmpfs, whose writes go to a tmpfs.  Each attack is first shown to work on the host
(same files, a filesystem without those flags), so none of these tests can pass because the
attack did nothing.
"""
import hashlib
import os

import pytest

import helpers
from seclib import leaked

pytestmark = pytest.mark.rootless


def _probe_on_host(hostile_rootfs, name, *paths):
    return helpers.as_user([str(hostile_rootfs / "bin" / name), *map(str, paths)]).stdout


def test_setuid_root_gains_nothing(hpccont_user, hostile_sif, hostile_rootfs, test_user, secrets):
    host = _probe_on_host(hostile_rootfs, "suidprobe", secrets["root"])
    assert "euid=0" in host and "setuid(0): GAINED" in host and leaked(host), host
    r = hpccont_user("exec", hostile_sif, "/bin/suidprobe", secrets["root"])
    assert r.returncode == 0, r.stderr
    assert f"ruid={test_user.pw_uid} euid={test_user.pw_uid}" in r.stdout, r.stdout
    assert "CapEff:\t0000000000000000" in r.stdout
    assert "setuid(0): refused" in r.stdout and not leaked(r.stdout), r.stdout


def test_file_capabilities_give_nothing(hpccont_user, hostile_sif, hostile_rootfs, test_user,
                                        secrets):
    host = _probe_on_host(hostile_rootfs, "capprobe", secrets["root"], secrets["victim"])
    assert "CapEff:\t0000000000000000" not in host and leaked(host), host
    r = hpccont_user("exec", hostile_sif, "/bin/capprobe", secrets["root"], secrets["victim"])
    assert r.returncode == 0, r.stderr
    assert "CapEff:\t0000000000000000" in r.stdout and "CapPrm:\t0000000000000000" in r.stdout
    assert r.stdout.count("refused (Permission denied)") == 2 and not leaked(r.stdout), r.stdout
    assert "setuid(0): refused" in r.stdout


def test_setuid_and_caps_under_fakeroot_stay_in_the_namespace(hpccont_user, hostile_sif,
                                                              secrets):
    """--fakeroot: root inside is the user outside; the host's files stay the host's."""
    r = hpccont_user("exec", "--fakeroot", hostile_sif, "/bin/capprobe", secrets["root"])
    assert r.returncode == 0, r.stderr
    assert "refused (Permission denied)" in r.stdout and not leaked(r.stdout), r.stdout


def test_device_nodes_in_the_image_cannot_be_opened(hpccont_user, hostile_sif, hostile_rootfs):
    host = _probe_on_host(hostile_rootfs, "probe", "+" + str(hostile_rootfs / "dev-null-node"))
    assert "OPENED" in host, host
    r = hpccont_user("exec", hostile_sif, "/bin/probe", "+/dev-null-node", "/etc/disk-node",
                     "+/dev/null")
    assert r.returncode == 0, r.stderr
    assert "write /dev-null-node: refused (Permission denied)" in r.stdout, r.stdout
    assert "read /etc/disk-node: refused (Permission denied)" in r.stdout, r.stdout
    assert "write /dev/null: OPENED" in r.stdout           # the host's /dev still works


@pytest.mark.root
def test_device_nodes_refused_as_root_too(hpccont, hostile_sif):
    """Root mode mounts the image from a loop device, also nodev: an image cannot hand root
    a raw disk through a node it carries."""
    r = hpccont("exec", hostile_sif, "/bin/probe", "+/dev-null-node", "/etc/disk-node")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("refused (Permission denied)") == 2, r.stdout


def test_writing_into_the_image(hpccont_user, hostile_sif):
    before = hashlib.sha256(hostile_sif.read_bytes()).hexdigest()
    r = hpccont_user("exec", hostile_sif, "sh", "-c",
                     "echo x > /bin/busybox; echo y > /newfile; mkdir /newdir; "
                     "rm /etc/passwd; echo done")
    assert r.returncode == 0 and "done" in r.stdout, r.stderr
    assert r.stderr.count("Read-only file system") >= 3, r.stderr
    r = hpccont_user("exec", "--writable-tmpfs", hostile_sif, "sh", "-c",
                     "echo x > /etc/hostname && echo written")
    assert "written" in r.stdout, r.stderr
    r = hpccont_user("exec", "--writable", hostile_sif, "true")
    assert r.returncode != 0 and "no overlay partition" in r.stderr, r.stderr
    assert hashlib.sha256(hostile_sif.read_bytes()).hexdigest() == before


def test_root_owned_sandbox_is_not_writable(hpccont_user, hostile_rootfs):
    r = hpccont_user("exec", "--writable", hostile_rootfs, "sh", "-c", "echo x > /pwned")
    assert r.returncode != 0 and "not yours to write" in r.stderr, r.stderr
    r = hpccont_user("exec", hostile_rootfs, "sh", "-c", "echo x > /pwned")
    assert not (hostile_rootfs / "pwned").exists()
    assert os.stat(hostile_rootfs / "bin/suidprobe").st_mode & 0o4000
