"""A rootless --fakeroot build whose %post runs apt-get, as the unprivileged test user, from a
Debian minbase image (debootstrap, cached per machine).  Device nodes of the source image cannot
be created in a user namespace and are left out (the runtime binds the host's /dev)."""
import subprocess

import pytest

import helpers

pytestmark = [pytest.mark.debootstrap, pytest.mark.rootless, pytest.mark.slow]


def test_fakeroot_build_runs_apt_get(hpccont_user, shared_tmp, test_user):
    src = shared_tmp / "debian.sqsh"
    helpers.mksquashfs(helpers.debootstrap_rootfs("minbase"), src, comp="zstd")
    src.chmod(0o644)
    d = shared_tmp / "apt.def"
    d.write_text(f"Bootstrap: localimage\nFrom: {src}\n\n%post\n"
                 "    apt-get update -q\n"
                 "    apt-get install -y -q --no-install-recommends hello\n"
                 "    rm -rf /var/lib/apt/lists/*\n\n"
                 "%runscript\n    exec hello \"$@\"\n")
    d.chmod(0o644)
    out = shared_tmp / "hello.sif"
    r = hpccont_user("build", "--fakeroot", out, d, cwd=shared_tmp, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    r = hpccont_user("run", out, "--greeting=built-without-root", cwd="/tmp")
    assert r.returncode == 0 and r.stdout.strip() == "built-without-root", r.stderr
    owner = subprocess.run(["stat", "-c", "%U", str(out)], capture_output=True, text=True).stdout
    assert owner.strip() == test_user.pw_name
