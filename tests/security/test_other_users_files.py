"""Another user's 0600 file (root's, or a third user's) stays unread through every path option.

Why: rootless, every path the user names is opened or mounted by the user's own processes, in
a user namespace that maps only the user's uid; a file of an unmapped uid keeps its owner's
permissions and no capability of the namespace applies to it.  Refusals come before anything
is mounted, in one line, and no message quotes a file the user could not read.
"""
import os
import shutil

import pytest

from seclib import leaked

pytestmark = pytest.mark.rootless


def _refused(r, *words):
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert not leaked(out), out
    assert "Traceback" not in out, out
    for w in words:
        assert w in r.stderr, r.stderr
    return r


def test_bind_of_the_file_itself(hpccont_user, busybox_sif, secrets):
    for name in ("root", "victim"):
        _refused(hpccont_user("exec", "-B", f"{secrets[name]}:/x", busybox_sif, "cat", "/x"),
                 "permission denied")


def test_bind_of_their_directory(hpccont_user, busybox_sif, secrets):
    d = secrets["root"].parent
    r = hpccont_user("exec", "-B", f"{d}:/s", busybox_sif, "sh", "-c",
                     "cat /s/root-0600 /s/victim-0600 /s/root-0700/inside; ls /s/victim-0700")
    assert not leaked(r.stdout + r.stderr), r.stdout
    assert r.stderr.count("Permission denied") == 4, r.stderr
    _refused(hpccont_user("exec", "-B", f"{secrets['private_dir']}:/p", busybox_sif, "true"),
             "permission denied")


def test_the_container_sees_no_more_than_the_host(hpccont_user, busybox_sif, secrets):
    """The default /tmp bind shows the same files with the same owners and modes."""
    r = hpccont_user("exec", busybox_sif, "cat", secrets["root"], secrets["victim"],
                     secrets["private_dir"] / "inside")
    assert r.returncode != 0 and not leaked(r.stdout), r.stdout
    assert r.stderr.count("Permission denied") == 3, r.stderr


def test_home(hpccont_user, busybox_sif, secrets):
    for d in (secrets["private_dir"], secrets["victim_dir"]):
        _refused(hpccont_user("exec", "--home", f"{d}:/home/x", busybox_sif, "cat",
                              "/home/x/inside"), "permission denied")
    _refused(hpccont_user("exec", "--home", f"{secrets['root']}:/h", busybox_sif, "true"))


def test_overlay(hpccont_user, busybox_sif, secrets, user_dir):
    """Another user's overlay directory, writable or :ro, and a 0600 ext3 image of theirs."""
    victim_dir = secrets["victim_dir"]
    _refused(hpccont_user("exec", "--overlay", victim_dir, busybox_sif, "cat", "/inside"),
             "not writable by you")
    _refused(hpccont_user("exec", "--overlay", f"{victim_dir}:ro", busybox_sif, "cat", "/inside"))
    _refused(hpccont_user("exec", "--overlay", f"{secrets['root']}:ro", busybox_sif, "true"),
             "permission denied")
    # the user's own overlay, with a link in its upper layer to the secret: followed inside
    # the container, as the user, where the file keeps its owner and mode
    (user_dir / "upper").mkdir()
    (user_dir / "upper" / "secret").symlink_to(secrets["root"])
    os.system(f"chown -R {os.stat(user_dir).st_uid} {user_dir}")
    r = hpccont_user("exec", "--overlay", f"{user_dir}:ro", busybox_sif, "cat", "/secret")
    assert r.returncode != 0 and not leaked(r.stdout), r.stdout
    assert "Permission denied" in r.stderr, r.stderr


def test_pwd(hpccont_user, busybox_sif, secrets):
    _refused(hpccont_user("exec", "--pwd", secrets["private_dir"], busybox_sif, "cat", "inside"),
             "working directory", "Permission denied")
    _refused(hpccont_user("exec", "--pwd", secrets["victim_dir"] / "upper", busybox_sif, "cat",
                          "inside"), "Permission denied")


def test_env_file_and_image_path(hpccont_user, busybox_sif, secrets, user_dir, shared_tmp):
    (user_dir / "env").symlink_to(secrets["root"])
    for f in (secrets["root"], secrets["victim"], user_dir / "env"):
        _refused(hpccont_user("exec", "--env-file", f, busybox_sif, "env"))
    image = shared_tmp / "root-only.sif"
    shutil.copy(busybox_sif, image)
    image.chmod(0o600)
    (user_dir / "img.sif").symlink_to(image)
    for path in (image, user_dir / "img.sif"):
        _refused(hpccont_user("exec", path, "true"), "permission denied")


def test_workdir_and_scratch(hpccont_user, busybox_sif, secrets, user_dir):
    """--workdir in someone else's directory: nothing is created there, nothing read."""
    _refused(hpccont_user("exec", "--contain", "--workdir", secrets["private_dir"], busybox_sif,
                          "ls", "/tmp"), "Permission denied")
    (user_dir / "wd").symlink_to(secrets["victim_dir"])
    _refused(hpccont_user("exec", "--workdir", user_dir / "wd", "--scratch", "/scratch",
                          busybox_sif, "true"), "Permission denied")
    assert sorted(os.listdir(secrets["private_dir"])) == ["inside"]
