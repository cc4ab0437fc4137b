"""Persistent overlays (--overlay, --writable) and ``overlay create``, as the unprivileged user,
through real kernel overlayfs, fuse2fs, fuse-overlayfs and mkfs.ext3."""
import os
import shutil
import subprocess
import time

import pytest

import helpers

pytestmark = pytest.mark.rootless


def _user_sif(busybox_sif, user_dir, test_user, name="w.sif"):
    out = user_dir / name
    shutil.copy(busybox_sif, out)
    os.chown(out, test_user.pw_uid, test_user.pw_gid)
    return out


def _nothing_left(fragment):
    deadline = time.time() + 5
    while time.time() < deadline and (helpers.mounts_mentioning(fragment)
                                      or _fuse2fs_alive(fragment)):
        time.sleep(0.1)
    assert not helpers.mounts_mentioning(fragment)
    assert not _fuse2fs_alive(fragment)


def _fuse2fs_alive(fragment):
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
                state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if "fuse2fs" in cmd and fragment in cmd and state != "Z":
                found.append(pid)
    return found


def test_directory_overlay_keeps_writes(hpccont_user, busybox_sif, user_dir):
    ov = user_dir / "ovdir"
    helpers.as_user(["mkdir", str(ov)])
    r = hpccont_user("exec", "--overlay", ov, busybox_sif, "sh", "-c",
                     "echo kept > /opt/note && id -u")
    assert r.returncode == 0, r.stderr
    assert (ov / "upper" / "opt" / "note").read_text() == "kept\n"
    assert os.stat(ov / "upper" / "opt" / "note").st_uid == helpers.pwd.getpwnam("hpcuser").pw_uid
    r = hpccont_user("exec", "-o", f"{ov}:ro", busybox_sif, "cat", "/opt/note")
    assert r.returncode == 0 and r.stdout == "kept\n", r.stderr
    r = hpccont_user("exec", "--overlay", f"{ov}:ro", busybox_sif, "touch", "/opt/x")
    assert r.returncode != 0 and "Read-only" in r.stderr
    # without the overlay the image is as built
    r = hpccont_user("exec", busybox_sif, "cat", "/opt/note")
    assert r.returncode != 0


def test_ext3_overlay_created_and_kept(hpccont_user, busybox_sif, user_dir, test_user):
    img = user_dir / "ov.img"
    r = hpccont_user("overlay", "create", "--size", "64", "--create-dir", "/data", img)
    assert r.returncode == 0, r.stderr
    st = os.stat(img)
    assert st.st_size == 64 << 20 and st.st_mode & 0o777 == 0o600 and st.st_uid == test_user.pw_uid
    listing = subprocess.run(["debugfs", "-R", "ls -l upper", str(img)], capture_output=True,
                             text=True).stdout
    assert "data" in listing and str(test_user.pw_uid) in listing
    r = hpccont_user("overlay", "create", "--size", "64", img)
    assert r.returncode != 0 and "already exists" in r.stderr
    r = hpccont_user("exec", "--overlay", img, busybox_sif, "sh", "-c",
                     "echo one > /data/f && ls -ln /data/f")
    assert r.returncode == 0, r.stderr
    assert f" {test_user.pw_uid} " in r.stdout
    r = hpccont_user("exec", "--overlay", f"{img}:ro", busybox_sif, "cat", "/data/f")
    assert r.returncode == 0 and r.stdout == "one\n", r.stderr
    _nothing_left(str(img))
    # the file is in the ext3 filesystem itself, owned by the user (as Apptainer writes it)
    out = subprocess.run(["debugfs", "-R", "stat upper/data/f", str(img)], capture_output=True,
                         text=True).stdout
    assert f"User:  {test_user.pw_uid}" in out


def test_sif_overlay_partition(hpccont_user, busybox_sif, user_dir, test_user):
    sif = _user_sif(busybox_sif, user_dir, test_user)
    r = hpccont_user("exec", "--writable", sif, "true")
    assert r.returncode != 0 and "no overlay partition" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = hpccont_user("overlay", "create", "--size", "64", "--sparse", sif)
    assert r.returncode == 0, r.stderr
    listed = hpccont_user("sif", "list", sif).stdout
    assert "FS (Ext3/Overlay/amd64)" in listed, listed
    r = hpccont_user("exec", "-w", sif, "sh", "-c", "echo part > /opt/p")
    assert r.returncode == 0, r.stderr
    # without --writable the partition is there, read-only
    r = hpccont_user("exec", sif, "cat", "/opt/p")
    assert r.returncode == 0 and r.stdout == "part\n", r.stderr
    r = hpccont_user("exec", sif, "touch", "/opt/q")
    assert r.returncode != 0
    # another image can use it as an overlay
    r = hpccont_user("exec", "--overlay", f"{sif}:ro", busybox_sif, "cat", "/opt/p")
    assert r.returncode == 0 and r.stdout == "part\n", r.stderr
    r = hpccont_user("overlay", "create", "--size", "64", sif)
    assert r.returncode != 0 and "already exists" in r.stderr
    _nothing_left(str(sif))


def test_sif_partition_layout_is_the_reference_one(busybox_sif, tmp_path):
    """The appended object as the SIF reference code's AddObject writes it."""
    from hpccont.image import overlay, sif
    out = tmp_path / "a.sif"
    shutil.copy(busybox_sif, out)
    before = sif.read_sif(str(out))
    overlay.create(str(out), 64, sparse=True)
    after = sif.read_sif(str(out))
    new = after.descriptors[-1]
    assert len(after.descriptors) == len(before.descriptors) + 1
    assert new.id == len(before.descriptors) + 1
    assert (new.fs_type, new.part_type, new.part_arch) == (sif.FS_EXT3, sif.PART_OVERLAY, "amd64")
    assert new.group_id == 1 and new.linked_id == 0 and new.offset % 4096 == 0
    assert new.offset >= before.file_size
    assert after.header.data_offset + after.header.data_size == new.offset + new.size
    assert after.header.descriptors_free == before.header.descriptors_free - 1
    with open(out, "rb") as f:
        f.seek(new.offset + 1080)
        assert f.read(2) == b"\x53\xef"


def test_two_writers_refused_readers_shared(hpccont_user, busybox_sif, user_dir):
    ov = user_dir / "shared"
    helpers.as_user(["mkdir", str(ov)])
    img = user_dir / "shared.img"
    assert hpccont_user("overlay", "create", img).returncode == 0
    for path in (ov, img):
        writer = _background(hpccont_user, "--overlay", path, busybox_sif, "sleep", "5")
        try:
            _wait_for_lock(path)
            r = hpccont_user("exec", "--overlay", path, busybox_sif, "true")
            assert r.returncode != 0 and "in use by another container" in r.stderr
            assert len(r.stderr.strip().splitlines()) == 1
            r = hpccont_user("exec", "--overlay", f"{path}:ro", busybox_sif, "true")
            assert r.returncode != 0 and "being written" in r.stderr
        finally:
            writer.wait()
        time.sleep(0.5)
        readers = [_background(hpccont_user, "--overlay", f"{path}:ro", busybox_sif, "sleep", "3")
                   for _ in range(2)]
        try:
            _wait_for_lock(path)
            r = hpccont_user("exec", "--overlay", f"{path}:ro", busybox_sif, "true")
            assert r.returncode == 0, r.stderr
            r = hpccont_user("exec", "--overlay", path, busybox_sif, "true")
            assert r.returncode != 0 and "in use" in r.stderr
        finally:
            for p in readers:
                p.wait()
    _nothing_left(str(img))


def _background(hpccont_user, *args):
    """``hpccont exec ARGS`` as the test user, not waited for."""
    pw = helpers.pwd.getpwnam("hpcuser")
    env = ["env", "-i", "PATH=/usr/bin:/bin", f"HOME={pw.pw_dir}", "USER=hpcuser"]
    return subprocess.Popen(["runuser", "-u", "hpcuser", "--", *env, _HPCCONT[0], "exec",
                             *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


_HPCCONT = []


@pytest.fixture(autouse=True)
def _installed(install):
    _HPCCONT[:] = [install["hpccont"]]


def _wait_for_lock(path):
    """Until some process holds a flock on ``path`` (/proc/locks lists its inode)."""
    ino = os.stat(path).st_ino
    deadline = time.time() + 15
    while time.time() < deadline:
        with open("/proc/locks") as f:
            if any(line.split()[5].endswith(f":{ino}") for line in f if len(line.split()) > 5):
                time.sleep(0.3)
                return
        time.sleep(0.05)
    raise AssertionError(f"no lock on {path}")


def test_writable_sandbox_of_the_user(hpccont_user, busybox_rootfs, user_dir, test_user):
    box = user_dir / "box"
    shutil.copytree(busybox_rootfs, box, symlinks=True)
    subprocess.run(["chown", "-R", f"{test_user.pw_uid}:{test_user.pw_gid}", str(box)], check=True)
    r = hpccont_user("exec", "--writable", box, "sh", "-c", "echo w > /opt/in-box")
    assert r.returncode == 0, r.stderr
    assert (box / "opt" / "in-box").read_text() == "w\n"
    r = hpccont_user("exec", "--writable", busybox_rootfs, "true")
    assert r.returncode != 0 and "not yours to write" in r.stderr


def test_bad_overlay_inputs(hpccont_user, busybox_sif, busybox_squashfs, user_dir):
    junk = user_dir / "junk"
    helpers.as_user(["sh", "-c", f"echo hello > {junk}"])
    cases = [
        (["--overlay", user_dir / "missing"], "no such file"),
        (["--overlay", junk], "not a directory, ext3 image or SIF"),
        (["--overlay", "/etc"], "not writable by you"),
        (["--writable", "--writable-tmpfs"], "cannot be used together"),
    ]
    for opts, text in cases:
        r = hpccont_user("exec", *opts, busybox_sif, "true")
        assert r.returncode != 0 and text in r.stderr, (opts, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    a, b = user_dir / "a", user_dir / "b"
    helpers.as_user(["mkdir", str(a), str(b)])
    r = hpccont_user("exec", "--overlay", a, "--overlay", b, busybox_sif, "true")
    assert r.returncode != 0 and "only one overlay may be writable" in r.stderr
    r = hpccont_user("exec", "--overlay", a, "--overlay", f"{b}:ro", busybox_sif, "true")
    assert r.returncode == 0, r.stderr
    r = hpccont_user("exec", "--writable", busybox_squashfs, "true")
    assert r.returncode != 0 and "read-only squashfs" in r.stderr
    r = hpccont_user("overlay", "create", "--size", "10", user_dir / "small.img")
    assert r.returncode != 0 and "64 MiB" in r.stderr
    assert not (user_dir / "small.img").exists()
    r = hpccont_user("overlay", "create", junk)
    assert r.returncode != 0 and "must be SIF image" in r.stderr
    signed = user_dir / "signed.sif"
    shutil.copy("/work/shared/sif-conformance/images/one-group-signed-pgp.sif", signed)
    os.chmod(signed, 0o666)
    r = hpccont_user("overlay", "create", signed)
    assert r.returncode != 0 and "is signed" in r.stderr
    assert not list(user_dir.glob("*.ext3"))
