"""The Bearer flow against docker-registry in token mode with the test's issuer; credentials
from docker's config.json and from 'hpccont registry login'; wrong and missing credentials."""
import base64
import json

import pytest

import regtools as rt
from regtools import cache_is_clean, one_line_error

pytestmark = pytest.mark.registry


@pytest.fixture(scope="module")
def token_images(reg_root, token_registry):
    lay = rt.Layout(reg_root / "layout-token")
    desc = lay.image(rt.busybox_layers(), cmd=["echo", "via-token"])
    lay.tag("v1", desc)
    rt.skopeo_push(lay, "v1", token_registry, "private/bb")
    rt.skopeo_push(lay, "v1", token_registry, "public/bb")
    return {"private": f"docker://{token_registry.host}/private/bb:v1",
            "public": f"docker://{token_registry.host}/public/bb:v1"}


def _env(base, **kw):
    e = {k: v for k, v in base.items() if not k.startswith("HPCCONT_DOCKER_")}
    e.update(kw)
    return e


@pytest.mark.rootless
def test_bearer_pull_with_docker_config(hpccont_user, token_images, user_env, shared_tmp,
                                        token_issuer):
    docker = shared_tmp / "docker"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps({"auths": {
        token_images["private"].split("/")[2]: {
            "auth": base64.b64encode(f"{rt.USER}:{rt.PASSWORD}".encode()).decode()}}}))
    (docker / "config.json").chmod(0o644)
    before = len(token_issuer.requests)
    out = shared_tmp / "p.sif"
    r = hpccont_user("pull", out, token_images["private"],
                     env=_env(user_env, DOCKER_CONFIG=str(docker)))
    assert r.returncode == 0, r.stderr
    assert hpccont_user("run", out, env=user_env).stdout.strip() == "via-token"
    asked = token_issuer.requests[before:]
    assert asked and all(a["user"] == rt.USER for a in asked)
    assert any("repository:private/bb:pull" in s for a in asked for s in a["scope"])
    assert len(asked) <= 2          # one token serves the manifest and every blob


def test_bearer_anonymous_public_and_private(run_root, token_images, root_env, tmp_path):
    env = _env(root_env)
    r = run_root("pull", tmp_path / "pub.sif", token_images["public"], env=env)
    assert r.returncode == 0, r.stderr
    line = one_line_error(run_root("pull", tmp_path / "priv.sif", token_images["private"], env=env))
    assert "authentication required" in line and "hpccont registry login" in line
    assert not (tmp_path / "priv.sif").exists()


def test_bearer_wrong_password(run_root, token_images, root_env, tmp_path):
    env = _env(root_env, HPCCONT_DOCKER_USERNAME=rt.USER, HPCCONT_DOCKER_PASSWORD="wrong")
    line = one_line_error(run_root("pull", tmp_path / "x.sif", token_images["private"], env=env))
    assert "wrong username or password" in line
    assert not (tmp_path / "x.sif").exists()
    cache_is_clean(tmp_path / "cache")


def test_basic_wrong_and_missing_credentials(run_root, images, root_env, tmp_path):
    env = _env(root_env, HPCCONT_DOCKER_USERNAME=rt.USER, HPCCONT_DOCKER_PASSWORD="nope")
    line = one_line_error(run_root("pull", tmp_path / "x.sif", images["gzip"]["ref"], env=env))
    assert "access denied for user 'alice'" in line and "wrong credentials" in line
    line = one_line_error(run_root("pull", tmp_path / "x.sif", images["gzip"]["ref"],
                                   env=_env(root_env)))
    assert "authentication required" in line
    assert not (tmp_path / "x.sif").exists()
    assert not list((tmp_path / "cache" / "blob" / "sha256").glob("*")) \
        if (tmp_path / "cache" / "blob" / "sha256").exists() else True


@pytest.mark.rootless
@pytest.mark.parametrize("which", ["basic", "token"])
def test_registry_login_logout_list(hpccont_user, which, registry, token_registry, images,
                                    token_images, user_env, shared_tmp, test_user):
    reg = registry if which == "basic" else token_registry
    ref = images["gzip"]["ref"] if which == "basic" else token_images["private"]
    auth_file = shared_tmp / "home-auth.json"
    env = _env(user_env, HPCCONT_AUTH_FILE=str(auth_file))
    line = one_line_error(hpccont_user("registry", "login", "-u", rt.USER, "--password-stdin",
                                       reg.host, env=env, input="wrong\n"))
    assert "wrong" in line or "denied" in line
    assert not auth_file.exists()
    r = hpccont_user("registry", "login", "-u", rt.USER, "--password-stdin",
                     f"docker://{reg.host}", env=env, input=rt.PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    assert auth_file.stat().st_mode & 0o777 == 0o600
    assert auth_file.stat().st_uid == test_user.pw_uid
    r = hpccont_user("registry", "list", env=env)
    assert r.stdout.split() == [reg.host, rt.USER]
    r = hpccont_user("pull", shared_tmp / "l.sif", ref, env=env)
    assert r.returncode == 0, r.stderr
    assert hpccont_user("registry", "logout", reg.host, env=env).returncode == 0
    assert hpccont_user("registry", "list", env=env).stdout == ""
    line = one_line_error(hpccont_user("pull", "--disable-cache", shared_tmp / "m.sif", ref,
                                       env=env))
    assert "authentication required" in line
