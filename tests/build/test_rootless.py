"""Rootless builds as the unprivileged test user, with --fakeroot (user namespace)."""
import hashlib
import os
import subprocess

import pytest

from hpccont.image.build import fakeroot

pytestmark = pytest.mark.rootless

DEF = """\
Bootstrap: busybox
%files
    input.txt /opt/input.txt
%post
    id -u > /uid
    touch /owned-by-100 && chown 100:100 /owned-by-100
    echo 'export BUILT_BY=fakeroot' >> $HPCCONT_ENVIRONMENT
%runscript
    echo "rootless image: $*"
%test
    [ "$(cat /uid)" = 0 ]
"""


@pytest.fixture
def workdir(shared_tmp, test_user):
    (shared_tmp / "input.txt").write_text("in\n")
    (shared_tmp / "img.def").write_text(DEF)
    os.chmod(shared_tmp / "input.txt", 0o644)
    os.chmod(shared_tmp / "img.def", 0o644)
    return shared_tmp


def test_plan_uses_subordinate_ids_or_a_single_map():
    sub = "other:200000:10\nalice:100000:65536\n"
    p = fakeroot.plan_userns(1000, 1000, "alice", sub, sub, have_helpers=True)
    assert [m.text() for m in p.uid_maps] == ["0 1000 1", "1 100000 65536"] and p.use_helpers
    p = fakeroot.plan_userns(1000, 1000, "alice", sub, sub, have_helpers=False)
    assert [m.text() for m in p.uid_maps] == ["0 1000 1"] and not p.use_helpers
    p = fakeroot.plan_userns(1000, 1000, "bob", sub, sub, have_helpers=True)
    assert not p.use_helpers


def test_rootless_sandbox_build(hpccont_user, workdir, test_user):
    out = workdir / "sb"
    r = hpccont_user("build", "--fakeroot", "--sandbox", out, workdir / "img.def", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "fakeroot" in r.stderr
    assert (out / "uid").read_text().strip() == "0"          # root inside the namespace
    st = os.stat(out / "opt/input.txt")
    assert st.st_uid == test_user.pw_uid                       # the user's own, outside
    owner = os.stat(out / "owned-by-100").st_uid
    # chown inside lands on a subordinate id when /etc/subuid has a range for the user
    plan = _plan_for(test_user)
    assert owner == (plan.uid_maps[1].outer + 99 if plan.use_helpers else test_user.pw_uid)
    assert "BUILT_BY=fakeroot" in (out / ".singularity.d/env/91-environment.sh").read_text()


def _plan_for(user):
    read = lambda p: open(p).read() if os.path.exists(p) else ""  # noqa: E731
    import shutil
    return fakeroot.plan_userns(user.pw_uid, user.pw_gid, user.pw_name, read("/etc/subuid"),
                                read("/etc/subgid"),
                                bool(shutil.which("newuidmap") and shutil.which("newgidmap")))


def test_rootless_sif_is_reproducible_and_root_owned_inside(hpccont_user, workdir):
    digests = []
    for name in ("a.sif", "b.sif"):
        r = hpccont_user("build", "--fakeroot", workdir / name, workdir / "img.def", cwd=workdir)
        assert r.returncode == 0, r.stderr
        digests.append(hashlib.sha256((workdir / name).read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    listing = subprocess.run(["unsquashfs", "-lln", "-o", _offset(workdir / "a.sif"),
                              str(workdir / "a.sif")], capture_output=True, text=True).stdout
    line = next(ln for ln in listing.splitlines() if ln.endswith("/owned-by-100"))
    assert " 100/100 " in line
    line = next(ln for ln in listing.splitlines() if ln.endswith("/opt/input.txt"))
    assert " 0/0 " in line


def _offset(path) -> str:
    from hpccont.image.source import open_image
    return str(open_image(str(path)).offset)


def test_rootless_failure_leaves_nothing(hpccont_user, workdir):
    d = workdir / "fail.def"
    d.write_text("Bootstrap: busybox\n%post\n  echo boom; exit 7\n")
    os.chmod(d, 0o644)
    r = hpccont_user("build", "-q", "--fakeroot", workdir / "f.sif", d, cwd=workdir)
    assert r.returncode == 7 and "%post failed with exit code 7" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not [p for p in os.listdir(workdir) if p.startswith((".f.sif", "f.sif"))]
