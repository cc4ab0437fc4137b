"""Debian images: the debootstrap agent for real, and %post with dpkg/apt on a cached tree."""
import os

import pytest

import helpers

pytestmark = [pytest.mark.debootstrap, pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def minbase():
    if os.geteuid() != 0:
        pytest.skip("debootstrap needs root here")
    return helpers.debootstrap_rootfs("minbase")


def test_localimage_debian_tree_with_post_using_dpkg(hpccont, tmp_path, minbase):
    d = tmp_path / "deb.def"
    d.write_text(f"Bootstrap: localimage\nFrom: {minbase}\n\n%post\n"
                 "    dpkg-query -W -f '${Package}\\n' coreutils > /pkg\n"
                 "    useradd --system --no-create-home svc\n"
                 "    install -d -o svc /srv/data\n"
                 "%runscript\n    exec cat /etc/debian_version\n")
    out = tmp_path / "sb"
    r = hpccont("build", "--sandbox", out, d, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (out / "pkg").read_text() == "coreutils\n"
    svc = next(line for line in (out / "etc/passwd").read_text().splitlines()
               if line.startswith("svc:"))
    assert os.stat(out / "srv/data").st_uid == int(svc.split(":")[2])
    assert not (minbase / "pkg").exists()          # the cached source tree is untouched


def test_debootstrap_agent(hpccont, tmp_path):
    d = tmp_path / "bookworm.def"
    mirror = helpers.DEBIAN_MIRROR.replace("bookworm", "%{OSVERSION}")
    d.write_text(f"Bootstrap: debootstrap\nOSVersion: bookworm\nMirrorURL: {mirror}\n"
                 "Include: less\n\n%post\n    echo built > /built\n"
                 "%test\n    test -x /usr/bin/less\n")
    out = tmp_path / "sb"
    r = hpccont("build", "--sandbox", out, d, timeout=900)
    assert r.returncode == 0, r.stderr
    assert (out / "etc/debian_version").read_text().startswith("12")
    assert (out / "built").read_text() == "built\n"
    assert not list((out / "var/cache/apt/archives").glob("*.deb"))


def test_debootstrap_failure_is_one_line(hpccont, tmp_path):
    d = tmp_path / "bad.def"
    d.write_text("Bootstrap: debootstrap\nOSVersion: no-such-suite\n"
                 "MirrorURL: file:///nonexistent/mirror\n")
    r = hpccont("build", "-q", "--sandbox", tmp_path / "sb", d, timeout=300)
    assert r.returncode == 5 and "debootstrap failed" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "sb").exists()
