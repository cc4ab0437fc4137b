"""--fakeroot at run time, as the unprivileged test user: root inside through the user
namespace (its /etc/subuid range mapped behind), and apt-get into a persistent overlay."""
import os

import pytest

import helpers

pytestmark = pytest.mark.rootless


def _subuid_start(user="hpcuser"):
    for line in open("/etc/subuid"):
        name, start, _ = line.strip().split(":")
        if name == user:
            return int(start)
    return None


def test_fakeroot_is_root_inside(hpccont_user, busybox_sif, user_dir, test_user):
    r = hpccont_user("exec", "--fakeroot", busybox_sif, "sh", "-c", "id -u; id -g; cat /proc/self/uid_map")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[:2] == ["0", "0"]
    assert lines[2].split() == ["0", str(test_user.pw_uid), "1"]
    start = _subuid_start()
    ov = user_dir / "ov"
    helpers.as_user(["mkdir", str(ov)])
    r = hpccont_user("exec", "-f", "--overlay", ov, busybox_sif, "sh", "-c",
                     "touch /opt/mine /opt/theirs && chown 5:5 /opt/theirs")
    if start is None:      # a single mapping: chown to an unmapped id fails, as in Apptainer
        assert r.returncode != 0
        return
    assert r.returncode == 0, r.stderr
    assert os.stat(ov / "upper/opt/mine").st_uid == test_user.pw_uid
    assert os.stat(ov / "upper/opt/theirs").st_uid == start + 4
    # without --fakeroot the same overlay is the user's again
    r = hpccont_user("exec", "--overlay", ov, busybox_sif, "id", "-u")
    assert r.stdout.strip() == str(test_user.pw_uid)


def test_bad_fakeroot_and_root_flags(hpccont_user, busybox_sif):
    r = hpccont_user("exec", "--fakeroot=maybe", busybox_sif, "true")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.debootstrap
@pytest.mark.slow
def test_apt_get_install_into_an_overlay(hpccont_user, user_dir, world_tmp):
    tree = helpers.debootstrap_rootfs("minbase")
    img = world_tmp / "images" / "debian-minbase-lz4.sqsh"
    if not img.exists():
        img.parent.mkdir(parents=True, exist_ok=True)
        helpers.subprocess.run(["mksquashfs", str(tree), str(img), "-noappend", "-quiet",
                                "-comp", "lz4", "-no-progress"], check=True,
                               stdout=helpers.subprocess.DEVNULL)
        img.chmod(0o644)
    ov = user_dir / "apt"
    helpers.as_user(["mkdir", str(ov)])
    r = hpccont_user("exec", "--fakeroot", "--overlay", ov, img, "sh", "-c",
                     "apt-get update -q >/dev/null && "
                     "apt-get install -y -q --no-install-recommends hello >/dev/null && hello",
                     timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stdout.strip().endswith("Hello, world!")
    # kept: the next container, as the user, runs what root installed
    r = hpccont_user("exec", "--overlay", f"{ov}:ro", img, "hello")
    assert r.returncode == 0 and r.stdout.strip() == "Hello, world!", r.stderr
    assert (ov / "upper/usr/bin/hello").exists()
    r = hpccont_user("exec", img, "sh", "-c", "command -v hello || echo absent")
    assert r.stdout.strip() == "absent"
