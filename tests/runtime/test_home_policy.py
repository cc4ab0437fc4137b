"""``--home SRC:DST`` is a bind mount: the site's bind policy (``mounts.user_binds``, the
denylist) applies to it as to ``-B``, except for the caller's own home directory."""
import os
import pwd

import pytest

import helpers
from hpccont import config
from hpccont.errors import BindError, PolicyError, UsageError
from hpccont.runtime.plan import make_plan
from hpccont.runtime.request import ContainerRequest


def _plan(image, cfg, home):
    req = ContainerRequest(image=str(image), argv=["true"], home=home)
    return make_plan(req, cfg, {"HOME": "/root"}, "/tmp")


def test_home_source_needs_user_binds(busybox_squashfs, tmp_path):
    cfg = config.defaults()
    cfg["mounts"]["user_binds"] = False
    with pytest.raises(PolicyError, match="user bind mounts are disabled"):
        _plan(busybox_squashfs, cfg, f"{tmp_path}:/home/x")
    with pytest.raises(PolicyError, match="user bind mounts are disabled"):
        _plan(busybox_squashfs, cfg, str(tmp_path))
    own = pwd.getpwuid(os.getuid()).pw_dir
    plan = _plan(busybox_squashfs, cfg, f"{own}:/home/inside")     # own home, elsewhere: fine
    assert {m.target: m.source for m in plan.mounts}["/home/inside"] == own


def test_home_source_denylist(busybox_squashfs, tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    (tmp_path / "alias").symlink_to(secret)
    cfg = config.defaults()
    cfg["mounts"]["user_bind_denylist"] = [str(secret)]
    for src in (secret, tmp_path / "alias", secret / "."):
        with pytest.raises(BindError, match="not allowed by the site configuration"):
            _plan(busybox_squashfs, cfg, f"{src}:/h")
    with pytest.raises(BindError, match="not allowed"):
        _plan(busybox_squashfs, cfg, f"{secret}/../secret")


def test_home_spec_errors(busybox_squashfs, tmp_path):
    cfg = config.defaults()
    with pytest.raises(BindError, match="does not exist"):
        _plan(busybox_squashfs, cfg, f"{tmp_path}/missing:/h")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BindError, match="not a directory"):
        _plan(busybox_squashfs, cfg, f"{tmp_path}/file:/h")
    with pytest.raises(UsageError, match="absolute"):
        _plan(busybox_squashfs, cfg, f"{tmp_path}:relative")
    with pytest.raises(BindError, match="escapes the container root"):
        _plan(busybox_squashfs, cfg, f"{tmp_path}:/../../h")
    with pytest.raises(UsageError, match="empty source"):
        _plan(busybox_squashfs, cfg, ":/h")


@pytest.mark.rootless
def test_home_policy_as_user(hpccont_user, busybox_sif, shared_tmp, test_user):
    """A real user, a site that forbids user binds: --home of another directory is refused
    before anything is mounted; the user's own home at another place still works."""
    data = shared_tmp / "data"
    data.mkdir()
    (data / "f").write_text("other\n")
    os.system(f"chmod -R a+rX {shared_tmp}")
    cfg = shared_tmp / "site.yaml"
    cfg.write_text(f"mounts:\n  user_binds: false\n  user_bind_denylist: [{data}]\n")
    env = {"HPCCONT_CONFIG": str(cfg)}
    r = hpccont_user("exec", "--home", f"{data}:/h", busybox_sif, "cat", "/h/f", env=env)
    assert r.returncode == 6 and "user bind mounts are disabled" in r.stderr, r.stdout + r.stderr
    assert "other" not in r.stdout
    home = pwd.getpwnam(helpers.TEST_USER).pw_dir
    r = hpccont_user("exec", "--home", f"{home}:/work", busybox_sif, "sh", "-c",
                     "echo $HOME; ls -d /work", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["/work", "/work"]
    cfg.write_text(f"mounts:\n  user_bind_denylist: [{data}]\n")
    r = hpccont_user("exec", "--home", f"{data}:/h", busybox_sif, "cat", "/h/f", env=env)
    assert r.returncode == 7 and "not allowed" in r.stderr, r.stdout + r.stderr
