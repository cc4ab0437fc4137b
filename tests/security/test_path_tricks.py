"""``..`` and symbolic links, in the image and in every path option.

Two rules, one per side of the boundary:
- a path inside the image (a bind destination, a mount point, the container's own lookups) is
  resolved inside the image root: absolute links restart at that root, and a destination that
  climbs above it is refused (``rootpath.resolve``, ``runtime/mounts.py``);
- a path on the host (a bind source, --home, --overlay, --env-file, --workdir, the image) is
  resolved by the kernel for the user, with the user's rights: ``..`` and links there can only
  reach what the user could reach anyway.
Each case is run as the unprivileged user; the image-side ones as root too, where following
the image's links on the host would matter most.
"""
import os

import pytest

import helpers
from seclib import leaked

pytestmark = pytest.mark.rootless


def _host_mounts_unchanged(before):
    assert helpers.mounts_mentioning("host-target") == before


@pytest.mark.parametrize("as_root", [False, True], ids=["user", "root"])
def test_bind_destination_linking_out_is_refused(request, hostile_sif, host_target, as_root,
                                                 shared_tmp):
    run = request.getfixturevalue("hpccont" if as_root else "hpccont_user")
    before = helpers.mounts_mentioning("host-target")
    for dst in ("/etc/escape", "/etc/escape/sub", "/etc/up/x", "/hostroot/../../x"):
        r = run("exec", "-B", f"{shared_tmp}:{dst}", hostile_sif, "true")
        assert r.returncode != 0, (dst, r.stderr)
        assert "escapes the container root" in r.stderr, (dst, r.stderr)
    assert os.listdir(host_target) == []
    _host_mounts_unchanged(before)


@pytest.mark.parametrize("as_root", [False, True], ids=["user", "root"])
def test_absolute_links_in_the_image_stay_inside(request, hostile_sif, as_root):
    """/hostroot -> / and /etc/shadow-link -> /etc/shadow: the container's own lookups, done by
    the kernel after pivot_root, find the image's files (there is no /etc/shadow in it)."""
    run = request.getfixturevalue("hpccont" if as_root else "hpccont_user")
    r = run("exec", hostile_sif, "sh", "-c",
            "cat /hostroot/etc/hostname /etc/up/etc/hostname; cat /etc/shadow-link; "
            "ls /hostroot/work /hostroot/root/.bashrc 2>&1; true")
    assert r.stdout.split()[:2] == ["container", "container"], r.stdout
    shadow = open("/etc/shadow").read().splitlines()
    assert not [line for line in shadow if line and line in r.stdout], r.stdout
    assert "No such file" in r.stderr + r.stdout


def test_bind_destination_through_an_absolute_link(hpccont_user, hostile_sif, host_target,
                                                   shared_tmp):
    """/etc/abs-out -> HOST_TARGET (absolute, no ``..``): resolved in the image, it names the
    container's own HOST_TARGET, which lies under the container's /tmp (the host's /tmp
    bound): the bind lands there, inside the container's mount namespace only."""
    before = helpers.mounts_mentioning("host-target")
    (shared_tmp / "mark").write_text("bound\n")
    r = hpccont_user("exec", "-B", f"{shared_tmp}:/etc/abs-out/sub", hostile_sif, "cat",
                     f"{host_target}/sub/mark")
    assert r.returncode == 0 and r.stdout == "bound\n", r.stderr
    assert os.listdir(host_target) == []          # the user could not create it on the host
    _host_mounts_unchanged(before)


# (options, what happens): a tuple of words of which the one-line refusal has one, or "runs"
# (harmlessly: nothing the user could not read shows).  "{u}" is the user's own directory.
# Host-side paths resolve with the user's rights (and the site's default denylist).
DENIED = ("permission denied", "Permission denied", "not allowed by the site configuration")
CLIMBS = ("escapes the container root",)
DOTS = [
    (["-B", "{u}/../../../../../../etc/shadow:/x"], DENIED),
    (["-B", "{u}/../../../../../../root:/x"], DENIED),
    (["-B", "{u}:/../../x"], CLIMBS),
    (["-B", "{u}:/tmp/../../x"], CLIMBS),
    (["--home", "{u}:/home/../../x"], CLIMBS),
    (["--home", "{u}/../../../../../../root:/home/x"], DENIED),
    (["--scratch", "/../../x"], CLIMBS),
    (["--overlay", "{u}/../../../../../../root"], ("not writable by you",)),
    (["--overlay", "{u}/../../../../../../etc:ro"], "runs"),      # /etc is readable anyway
    (["--env-file", "{u}/../../../../../../etc/shadow"], DENIED),
    (["--workdir", "{u}/../../../../../../root", "--contain"], DENIED),
    (["--pwd", "/../../../.."], "runs"),                          # clamped at the root
]


@pytest.mark.parametrize("options,outcome", DOTS, ids=[f"dots{i}" for i in range(len(DOTS))])
def test_dots_in_path_options(hpccont_user, busybox_sif, user_dir, options, outcome):
    opts = [o.format(u=user_dir) for o in options]
    r = hpccont_user("exec", *opts, busybox_sif, "sh", "-c",
                     "pwd; cat /x/shadow /shadow 2>&1; true")
    out = r.stdout + r.stderr
    assert "Traceback" not in out and not leaked(out), out
    assert "root:" not in r.stdout, out
    if outcome == "runs":
        assert r.returncode == 0, out
        if "--overlay" in opts:             # the host's shadow, seen and refused
            assert "can't open '/shadow': Permission denied" in r.stdout, out
        if "--pwd" in opts:
            assert r.stdout.split()[0] == "/", out
    else:
        assert r.returncode != 0 and any(w in r.stderr for w in outcome), out


def test_links_in_path_options(hpccont_user, busybox_sif, user_dir, secrets):
    """The user's own links to what they cannot read: the same refusals as the paths."""
    links = {"l-shadow": "/etc/shadow", "l-root": "/root", "l-private": secrets["private_dir"]}
    for name, target in links.items():
        (user_dir / name).symlink_to(target)
    cases = [["-B", "{u}/l-shadow:/x"], ["-B", "{u}/l-private:/x"],
             ["--home", "{u}/l-private:/home/x"], ["--overlay", "{u}/l-root"],
             ["--env-file", "{u}/l-shadow"], ["--pwd", "{u}/l-private"],
             ["--workdir", "{u}/l-private", "--contain"]]
    for options in cases:
        opts = [o.format(u=user_dir) for o in options]
        r = hpccont_user("exec", *opts, busybox_sif, "cat", "/x")
        out = r.stdout + r.stderr
        assert r.returncode != 0, (opts, out)
        assert any(w in r.stderr for w in DENIED + ("not writable by you",)), (opts, out)
        assert "Traceback" not in out and not leaked(out), out
