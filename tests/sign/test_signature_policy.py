"""``signatures.require`` end to end, as the unprivileged user: real images, real runtime.

The site config names the trusted key; unsigned, tampered and unsignable (squashfs) images are
refused with one line before anything is mounted, the signed one runs, and a second run takes
the verification from the user's cache instead of hashing the image again.
"""
import hashlib
import os
import shutil

import pytest

from signlib import flip_byte
from hpccont.image import sif

pytestmark = pytest.mark.rootless


@pytest.fixture
def site(hpccont, busybox_sif, shared_tmp):
    """(signed image, unsigned image, env with HPCCONT_CONFIG) in a dir the test user reads."""
    r = hpccont("key", "newpair", "--out", shared_tmp / "site")
    assert r.returncode == 0, r.stderr
    signed, unsigned = shared_tmp / "signed.sif", shared_tmp / "unsigned.sif"
    for p in (signed, unsigned):
        shutil.copyfile(busybox_sif, p)
        p.chmod(0o755)
    assert hpccont("sign", "--key", shared_tmp / "site.pem", signed).returncode == 0
    (shared_tmp / "site.pub.pem").chmod(0o644)
    cfg = shared_tmp / "hpccont.yaml"
    cfg.write_text("signatures:\n  require: true\n"
                   f"  keyring: [{shared_tmp / 'site.pub.pem'}]\n")
    cfg.chmod(0o644)
    return signed, unsigned, {"HPCCONT_CONFIG": str(cfg)}


def _cache_file(user_home: str, image) -> str:
    digest = hashlib.sha256(str(image).encode()).hexdigest()[:24]
    return f"{user_home}/.cache/hpccont/sigverify-{digest}.json"


def _refused(r, fragment):
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], r.stderr


def test_policy_signed_runs_others_refused(hpccont_user, site, busybox_squashfs, test_user):
    signed, unsigned, env = site
    _refused(hpccont_user("exec", unsigned, "true", env=env), "no signatures")
    _refused(hpccont_user("exec", busybox_squashfs, "true", env=env), "cannot be signed")
    r = hpccont_user("exec", signed, "echo", "ran-signed", env=env)
    assert r.returncode == 0 and "ran-signed" in r.stdout, r.stderr
    # without the policy the unsigned image runs: the refusal above was the signature check
    r = hpccont_user("exec", unsigned, "true", env={"HPCCONT_CONFIG": ""})
    assert r.returncode == 0, r.stderr


def test_policy_second_run_uses_cache(hpccont_user, site, test_user):
    signed, _, env = site
    cache = _cache_file(test_user.pw_dir, signed)
    assert hpccont_user("exec", signed, "true", env=env).returncode == 0
    # written on a miss only: an untouched file means the second run verified nothing
    first = os.stat(cache).st_mtime_ns
    assert hpccont_user("exec", signed, "true", env=env).returncode == 0
    assert os.stat(cache).st_mtime_ns == first


def test_policy_tampered_image_refused(hpccont_user, site):
    signed, _, env = site
    assert hpccont_user("exec", signed, "true", env=env).returncode == 0   # now cached
    part = sif.read_sif(str(signed)).primary_partition()
    flip_byte(signed, part.offset + part.size - 100)
    _refused(hpccont_user("exec", signed, "true", env=env),
             f"image changed since signing (data of object {part.id})")


def test_policy_wrong_key_refused(hpccont_user, hpccont, site, shared_tmp):
    signed, _, env = site
    assert hpccont("key", "newpair", "--out", shared_tmp / "other").returncode == 0
    (shared_tmp / "other.pub.pem").chmod(0o644)
    cfg = shared_tmp / "other.yaml"
    cfg.write_text(f"signatures:\n  require: true\n  keyring: [{shared_tmp / 'other.pub.pem'}]\n")
    cfg.chmod(0o644)
    _refused(hpccont_user("exec", signed, "true", env={"HPCCONT_CONFIG": str(cfg)}),
             "no matching key")


def test_policy_mounts_the_file_it_verified(site, install, busybox_rootfs, shared_tmp, hpccont):
    """Replacing the image path between the check and the mount must not run the new file: the
    runtime verifies and mounts one open file (ImageSource.handle)."""
    import shutil
    import sys
    import helpers
    signed, _, env = site
    other_root = shared_tmp / "other-rootfs"
    shutil.copytree(busybox_rootfs, other_root, symlinks=True)
    (other_root / "marker").write_text("swapped-in\n")
    other = shared_tmp / "other.sif"
    assert hpccont("build", other, other_root).returncode == 0
    victim = shared_tmp / "victim.sif"
    shutil.copy(signed, victim)
    for p in (other, victim):
        p.chmod(0o644)
    script = shared_tmp / "race.py"
    script.write_text(f"""import os, sys
sys.path.insert(0, {install['lib']!r})
from hpccont import config
from hpccont.cli.launch import build_request
from hpccont.runtime.apply import apply
from hpccont.runtime.plan import make_plan
cfg = config.load()
req = build_request("exec", [{str(victim)!r}, "sh", "-c", "cat /marker 2>/dev/null || echo verified-content"])
plan = make_plan(req, cfg, os.environ, "/tmp")
os.rename({str(other)!r}, {str(victim)!r})      # swapped after the check, before the mount
apply(plan, cfg)
""")
    script.chmod(0o644)
    r = helpers.as_user([sys.executable, str(script)], env=env, cwd="/tmp")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "verified-content"


def _joined_pair(image, key, runner):
    """Two tasks with one --join key at once: both run, in one container."""
    cmd = ["exec", "--join", key, str(image), "sh", "-c", "readlink /proc/self/ns/mnt; sleep 1"]
    procs = [runner(cmd) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert len({out.strip() for out, _ in outs}) == 1, outs


def test_policy_join_works(site, install, test_user):
    """The keeper of a --join container must keep the verified image file open for the FUSE
    server (it closed it: 'Transport endpoint is not connected'; as root the loop device was
    set up from whatever file then had that descriptor number)."""
    import pwd
    import subprocess
    signed, _, env = site
    home = pwd.getpwnam("hpcuser").pw_dir

    def as_user(cmd):
        return subprocess.Popen(["runuser", "-u", "hpcuser", "--", "env", "-i", "PATH=/usr/bin:/bin",
                                 f"HOME={home}", f"HPCCONT_CONFIG={env['HPCCONT_CONFIG']}",
                                 install["hpccont"], *cmd],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _joined_pair(signed, "sigjoin-user", as_user)


@pytest.mark.root
def test_policy_join_works_as_root(site, install):
    import subprocess
    signed, _, env = site

    def as_root(cmd):
        return subprocess.Popen([install["hpccont"], *cmd], env=dict(os.environ, **env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _joined_pair(signed, "sigjoin-root", as_root)


def test_policy_instance_works(site, hpccont_user, test_user):
    signed, _, env = site
    r = hpccont_user("instance", "start", signed, "siginst", env=env)
    try:
        assert r.returncode == 0, r.stderr
        r = hpccont_user("exec", "instance://siginst", "cat", "/etc/hostname", env=env)
        assert r.returncode == 0 and r.stdout.strip(), r.stderr
    finally:
        hpccont_user("instance", "stop", "siginst", env=env)


def test_policy_rewrite_with_restored_mtime_refused(hpccont_user, site):
    """Rewritten in place, same size, mtime and inode put back: the ctime in the cache stamp
    still tells, so the image is verified again (and refused)."""
    signed, _, env = site
    assert hpccont_user("exec", signed, "true", env=env).returncode == 0   # now cached
    st = os.stat(signed)
    part = sif.read_sif(str(signed)).primary_partition()
    flip_byte(signed, part.offset + part.size - 100)
    os.utime(signed, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(signed)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns,
                                                                st.st_ino)
    _refused(hpccont_user("exec", signed, "true", env=env),
             f"image changed since signing (data of object {part.id})")
