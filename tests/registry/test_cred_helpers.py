"""Docker credential helpers (credHelpers, credsStore) against the Basic-auth test registry:
a helper written here that follows the docker-credential-helpers protocol; Docker's order
(credHelpers[registry] > credsStore > auths); helpers that fail, hang or answer garbage;
'hpccont registry login/logout' storing and erasing through the helper."""
import json

import pytest

import regtools as rt
from regtools import cache_is_clean, one_line_error

pytestmark = pytest.mark.registry


@pytest.fixture
def helper(shared_tmp):
    return rt.CredHelper(shared_tmp / "helper")


def _docker_config(d, doc: dict):
    d.mkdir(exist_ok=True)
    d.chmod(0o755)
    (d / "config.json").write_text(json.dumps(doc))
    (d / "config.json").chmod(0o644)
    return str(d)


@pytest.mark.rootless
def test_creds_store_serves_a_basic_auth_pull(hpccont_user, helper, registry, images, user_env,
                                              shared_tmp):
    host = registry.host
    helper.put(host, rt.USER, rt.PASSWORD)
    docker = _docker_config(shared_tmp / "docker", {"credsStore": helper.name,
                                                    "auths": {host: {}}})
    env = helper.env(user_env, DOCKER_CONFIG=docker)
    out = shared_tmp / "h.sif"
    r = hpccont_user("pull", out, images["gzip"]["ref"], env=env)
    assert r.returncode == 0, r.stderr
    assert hpccont_user("exec", out, "cat", "/opt/app", env=env).stdout == "app v2\n"
    assert helper.calls() == [f"get {host}"]       # asked once, for the registry's server URL


def test_cred_helpers_entry_comes_before_creds_store_and_auths(run_root, helper, registry,
                                                               images, root_env, tmp_path):
    host = registry.host
    helper.put(host, rt.USER, rt.PASSWORD)
    wrong = {"username": rt.USER, "password": "wrong"}
    docker = _docker_config(tmp_path / "docker", {
        "credHelpers": {host: helper.name}, "credsStore": "not-installed",
        "auths": {host: wrong}})
    env = helper.env(root_env, DOCKER_CONFIG=docker)
    r = run_root("pull", tmp_path / "a.sif", images["gzip"]["ref"], env=env)
    assert r.returncode == 0, r.stderr
    # an empty credHelpers name means the auths entry, as in Docker
    docker = _docker_config(tmp_path / "docker", {
        "credHelpers": {host: ""}, "credsStore": helper.name,
        "auths": {host: {"username": rt.USER, "password": rt.PASSWORD}}})
    r = run_root("pull", "--disable-cache", tmp_path / "b.sif", images["gzip"]["ref"], env=env)
    assert r.returncode == 0, r.stderr
    assert len(helper.calls()) == 1


def test_not_found_means_anonymous(run_root, helper, registry, images, root_env, tmp_path):
    docker = _docker_config(tmp_path / "docker", {
        "credsStore": helper.name,
        "auths": {registry.host: {"username": rt.USER, "password": rt.PASSWORD}}})
    env = helper.env(root_env, DOCKER_CONFIG=docker)
    line = one_line_error(run_root("pull", tmp_path / "x.sif", images["gzip"]["ref"], env=env))
    assert "authentication required" in line      # the helper decides; auths is not read
    assert helper.calls() == [f"get {registry.host}"]
    assert not (tmp_path / "x.sif").exists()


@pytest.mark.parametrize("mode, expect", [
    ("fail", "get failed: the keyring is locked"),
    ("hang", "get: no answer within 1 s"),
    ("garbage", "its answer is not the protocol's JSON"),
    ("token", "identity token"),
    ("missing", "not found on PATH"),
])
def test_helper_failures_are_one_line(run_root, helper, registry, images, root_env, tmp_path,
                                      mode, expect):
    helper.put(registry.host, rt.USER, rt.PASSWORD)
    name = "absent" if mode == "missing" else helper.name
    docker = _docker_config(tmp_path / "docker", {"credHelpers": {registry.host: name}})
    env = helper.env(root_env, DOCKER_CONFIG=docker, HPCTEST_CRED_MODE=mode,
                     HPCCONT_CREDENTIAL_HELPER_TIMEOUT="1")
    line = one_line_error(run_root("pull", tmp_path / "x.sif", images["gzip"]["ref"], env=env))
    prog = f"docker-credential-{name}"
    assert prog in line and expect in line, line
    assert rt.PASSWORD not in line
    assert not (tmp_path / "x.sif").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    cache_is_clean(tmp_path / "cache")


@pytest.mark.rootless
def test_login_and_logout_go_through_the_creds_store(hpccont_user, helper, registry, images,
                                                     user_env, shared_tmp):
    host = registry.host
    auth_file = shared_tmp / "auth.json"
    auth_file.write_text(json.dumps({"credsStore": helper.name}))
    auth_file.chmod(0o666)
    env = helper.env(user_env, HPCCONT_AUTH_FILE=str(auth_file))
    r = hpccont_user("registry", "login", "-u", rt.USER, "--password-stdin", host, env=env,
                     input=rt.PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    assert f"docker-credential-{helper.name}" in r.stdout
    assert json.loads(helper.store.read_text()) == {host: [rt.USER, rt.PASSWORD]}
    assert rt.PASSWORD not in auth_file.read_text()     # the file only says a login exists
    assert json.loads(auth_file.read_text())["auths"] == {host: {}}
    assert hpccont_user("registry", "list", env=env).stdout.split() == [host, rt.USER]
    r = hpccont_user("pull", "--disable-cache", shared_tmp / "l.sif", images["gzip"]["ref"],
                     env=env)
    assert r.returncode == 0, r.stderr
    r = hpccont_user("registry", "logout", host, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(helper.store.read_text()) == {}
    assert [c.split()[0] for c in helper.calls()] == ["store", "get", "get", "erase"]
    line = one_line_error(hpccont_user("registry", "logout", host, env=env))
    assert "no stored credentials" in line
    line = one_line_error(hpccont_user("pull", "--disable-cache", shared_tmp / "m.sif",
                                       images["gzip"]["ref"], env=env))
    assert "authentication required" in line
