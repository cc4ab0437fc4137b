"""A hostile definition file on a hostile base image, built as root and as the test user.

A definition file is code its builder chooses to run (``%setup`` runs on the host, as the
builder, by design, as in Apptainer); what must hold is that what the file names *inside the
image* stays inside: ``%files`` destinations through the base image's links out (``/hostroot
-> /``, ``/etc/escape -> /../../..HOST``) and through ``..`` land in the image's own tree, and
``%post`` runs in the container, not on the host.  Layer archives with such members are
tests/build/test_oci.py (test_layer_cannot_write_outside_rootfs); hostile labels and help
reaching generated modules, tests/lmod/test_hostile_metadata.py.
"""
import os

import pytest

import helpers

DEFINITION = """\
Bootstrap: localimage
From: {base}

%files
    {payload} /hostroot{target}/via-hostroot
    {payload} /etc/escape/via-escape
    {payload} /../../../../..{target}/via-dots
    {payload} /etc/up{target}/via-up

%post
    touch /hostroot{target}/from-post 2>/dev/null
    touch {target}/from-post-direct 2>/dev/null
    for f in via-hostroot via-escape via-dots via-up; do
        test -f {target}/$f && echo "inside: $f"
    done
    exit 0
"""


@pytest.fixture
def hostile_def(shared_tmp, hostile_sif, host_target):
    payload = shared_tmp / "payload"
    payload.write_text("PAYLOAD\n")
    d = shared_tmp / "hostile.def"
    d.write_text(DEFINITION.format(base=hostile_sif, payload=payload, target=host_target))
    os.system(f"chmod -R a+rwX {shared_tmp}")
    return d


def _check(r, out, host_target):
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    assert os.listdir(host_target) == [], r.stdout + r.stderr
    assert r.returncode == 0, r.stderr     # built, with every file inside the image
    assert r.stdout.count("inside: via-") + r.stderr.count("inside: via-") == 4, r.stdout


@pytest.mark.root
def test_hostile_definition_as_root(hpccont, hostile_def, shared_tmp, host_target):
    out = shared_tmp / "built-root"
    r = hpccont("build", "--sandbox", out, hostile_def, timeout=300)
    _check(r, out, host_target)
    assert (out / str(host_target).lstrip("/") / "via-escape").read_text() == "PAYLOAD\n"


@pytest.mark.rootless
def test_hostile_definition_as_user(hpccont_user, hostile_def, shared_tmp, host_target):
    out = shared_tmp / "built-user.sif"
    r = hpccont_user("build", out, hostile_def, timeout=300)
    _check(r, out, host_target)
    assert helpers.mounts_mentioning(str(host_target)) == []
