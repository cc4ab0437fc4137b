"""Instances with a persistent overlay, and overlays as root (loop devices, kernel ext3)."""
import os
import shutil
import subprocess
import time

import pytest

import helpers


@pytest.mark.rootless
def test_instance_holds_its_overlay(hpccont_user, busybox_sif, shared_tmp, test_user):
    d = shared_tmp / "u"
    d.mkdir()
    os.chown(d, test_user.pw_uid, test_user.pw_gid)
    img = d / "inst.img"
    assert hpccont_user("overlay", "create", img).returncode == 0
    name = f"ov{time.monotonic_ns() % 100000}"
    r = hpccont_user("instance", "start", "--overlay", img, busybox_sif, name)
    assert r.returncode == 0, r.stderr
    try:
        r = hpccont_user("exec", f"instance://{name}", "sh", "-c",
                         'echo "$APPTAINER_INSTANCE" > /opt/by-instance; cat /opt/by-instance')
        assert r.returncode == 0 and r.stdout.strip() == name, r.stderr
        r = hpccont_user("exec", "--overlay", img, busybox_sif, "true")
        assert r.returncode != 0 and "in use by another container" in r.stderr
    finally:
        assert hpccont_user("instance", "stop", name).returncode == 0
    r = hpccont_user("exec", "--overlay", f"{img}:ro", busybox_sif, "cat", "/opt/by-instance")
    assert r.returncode == 0 and r.stdout.strip() == name, r.stderr


@pytest.mark.root
def test_ext3_and_sif_overlays_as_root(hpccont, busybox_sif, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    img = tmp_path / "root.img"
    assert hpccont("overlay", "create", img).returncode == 0
    r = hpccont("exec", "--overlay", img, busybox_sif, "sh", "-c", "echo r > /opt/r")
    assert r.returncode == 0, r.stderr
    r = hpccont("exec", "--overlay", f"{img}:ro", busybox_sif, "cat", "/opt/r")
    assert r.returncode == 0 and r.stdout == "r\n", r.stderr
    sif = tmp_path / "root.sif"
    shutil.copy(busybox_sif, sif)
    assert hpccont("overlay", "create", "--sparse", sif).returncode == 0
    assert hpccont("exec", "-w", sif, "sh", "-c", "echo p > /opt/p").returncode == 0
    r = hpccont("exec", sif, "cat", "/opt/p")
    assert r.returncode == 0 and r.stdout == "p\n", r.stderr
    assert not helpers.mounts_mentioning(str(tmp_path))
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in loops
