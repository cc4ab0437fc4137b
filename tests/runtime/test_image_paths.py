"""Paths the runtime reads inside an image are looked up inside the image.

The container's /etc/passwd and /etc/group are made from the image's own files.  If the image
makes them symbolic links (absolute, or climbing with ``..``), they must lead to files of the
image, never to the host's: as root that would copy any host file (/etc/shadow) into the
container.  FIFOs and directories in their place are ignored, not opened.
"""
import os
import shutil
import subprocess

import pytest

import helpers


@pytest.fixture
def linked_image(busybox_rootfs, shared_tmp, install):
    """An image whose passwd and group are links to a host path that the image also has."""
    root = shared_tmp / "rootfs"
    shutil.copytree(busybox_rootfs, root, symlinks=True)
    for name in ("hostpasswd", "hostgroup"):
        host = shared_tmp / name
        host.write_text("HOST-CONTENT:x:4242:4242::/:/bin/sh\n")
        host.chmod(0o644)
        inner = root / str(host).lstrip("/")
        inner.parent.mkdir(parents=True, exist_ok=True)
        inner.write_text("IMAGE-CONTENT:x:4343:4343::/:/bin/sh\n")
    (root / "etc/passwd").unlink()
    (root / "etc/passwd").symlink_to(shared_tmp / "hostpasswd")          # absolute
    (root / "etc/group").unlink()
    (root / "etc/group").symlink_to("../../../../../../../.." + str(shared_tmp / "hostgroup"))
    sif = shared_tmp / "linked.sif"
    r = subprocess.run([install["hpccont"], "build", str(sif), str(root)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    os.system(f"chmod -R a+rX {shared_tmp}")
    return sif


def _check(out):
    assert "HOST-CONTENT" not in out, out
    assert out.count("IMAGE-CONTENT") == 2, out


@pytest.mark.root
def test_identity_files_resolved_in_image_as_root(hpccont, linked_image):
    r = hpccont("exec", linked_image, "cat", "/etc/passwd", "/etc/group")
    assert r.returncode == 0, r.stderr
    _check(r.stdout)
    assert "root:x:0:0:" in r.stdout and "root:x:0:root" in r.stdout


@pytest.mark.rootless
def test_identity_files_resolved_in_image_as_user(hpccont_user, linked_image, test_user):
    r = hpccont_user("exec", linked_image, "cat", "/etc/passwd", "/etc/group")
    assert r.returncode == 0, r.stderr
    _check(r.stdout)
    assert f"{helpers.TEST_USER}:x:{test_user.pw_uid}" in r.stdout


@pytest.mark.root
def test_shadow_link_as_root(hpccont, busybox_rootfs, shared_tmp):
    """The attack itself: /etc/passwd -> /etc/shadow in a sandbox root runs."""
    root = shared_tmp / "shadow-root"
    shutil.copytree(busybox_rootfs, root, symlinks=True)
    (root / "etc/passwd").unlink()
    (root / "etc/passwd").symlink_to("/etc/shadow")
    (root / "etc/group").unlink()
    os.mkfifo(root / "etc/group")                       # would block a plain open
    r = hpccont("exec", root, "cat", "/etc/passwd", timeout=60)
    assert r.returncode == 0, r.stderr
    host_shadow = open("/etc/shadow").read().splitlines()
    assert not [line for line in host_shadow if line and line in r.stdout.splitlines()]


def test_open_in_root_unit(tmp_path):
    from hpccont.rootpath import open_in_root, read_in_root
    root = tmp_path / "r"
    (root / "etc").mkdir(parents=True)
    (root / "etc/real").write_text("inside")
    (tmp_path / "outside").write_text("outside")
    (root / "etc/abs").symlink_to("/etc/real")
    (root / "etc/up").symlink_to("../../../../outside")
    (root / "etc/dir").symlink_to("..")
    (root / "loop").symlink_to("loop")
    assert read_in_root(str(root), "/etc/abs") == b"inside"
    assert read_in_root(str(root), "etc/dir/etc/dir/etc/real") == b"inside"
    assert read_in_root(str(root), "/etc/up") is None          # /outside of the image: none
    (root / "outside").write_text("image's own")
    assert read_in_root(str(root), "/etc/up") == b"image's own"
    assert read_in_root(str(root), "/loop") is None
    assert read_in_root(str(root), "/etc") is None              # a directory is not read
    with pytest.raises(OSError):
        open_in_root(str(root), "/loop")
