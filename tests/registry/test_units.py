"""References with Docker Hub rules, challenges, credential sources, platform selection,
the warm pull's own HTTP reader, and the exec path staying free of registry code."""
import base64
import io
import json
import subprocess
import sys

import pytest

from hpccont.image.registry import auth, pull, quick, reference
from hpccont.image.registry.errors import RegistryError

pytestmark = pytest.mark.registry


@pytest.mark.parametrize("text,registry,repo,tag,digest", [
    ("alpine", "docker.io", "library/alpine", "latest", None),
    ("docker://alpine:3.19", "docker.io", "library/alpine", "3.19", None),
    ("docker://user/img", "docker.io", "user/img", "latest", None),
    ("index.docker.io/library/ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", None),
    ("localhost/x", "localhost", "x", "latest", None),
    ("localhost:5000/a/b/c:t-1.2", "localhost:5000", "a/b/c", "t-1.2", None),
    ("127.0.0.1:5443/test/busybox:gzip", "127.0.0.1:5443", "test/busybox", "gzip", None),
    ("ghcr.io/owner/img@sha256:" + "a" * 64, "ghcr.io", "owner/img", None, "sha256:" + "a" * 64),
    ("nvcr.io/nvidia/pytorch:24.01-py3", "nvcr.io", "nvidia/pytorch", "24.01-py3", None),
    ("oras://reg.example:443/sifs/img:1", "reg.example:443", "sifs/img", "1", None),
])
def test_reference_normalisation(text, registry, repo, tag, digest):
    r = reference.parse(text)
    assert (r.registry, r.repository, r.tag, r.digest) == (registry, repo, tag, digest)


def test_hub_api_host_and_default_names():
    r = reference.parse("docker://alpine:3.19")
    assert r.api_host == "registry-1.docker.io"
    assert r.default_filename() == "alpine_3.19.sif"
    assert reference.parse("oras://h.io/a/b").scheme == "oras"


def test_registry_and_namespace_headers():
    r = reference.parse("ubuntu:22.04", registry="quay.io", namespace="myorg")
    assert (r.registry, r.repository) == ("quay.io", "myorg/ubuntu")
    r = reference.parse("busybox", namespace="mirror")
    assert (r.registry, r.repository) == ("docker.io", "mirror/busybox")
    r = reference.parse("other.io/x/y", registry="quay.io")
    assert r.registry == "other.io"


@pytest.mark.parametrize("bad", ["", "docker://", "Alpine:UPPER:x", "a//b", "x:bad tag",
                                 "x@sha256:1234", "/abs", "foo/Bar", "x:" + "t" * 200])
def test_bad_references(bad):
    with pytest.raises(RegistryError):
        reference.parse(bad)


def test_challenges():
    kind, p = auth.parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/alpine:pull"')
    assert kind == "bearer"
    assert p == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                 "scope": "repository:library/alpine:pull"}
    assert auth.parse_challenge('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})
    kind, p = auth.parse_challenge('Bearer realm=https://x/t, service=s, error="insufficient_scope"')
    assert p["realm"] == "https://x/t" and p["service"] == "s"


def test_credential_sources_in_order(tmp_path):
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hubuser:hubpw").decode()},
        "reg.example:5000": {"username": "u2", "password": "p2"}}}))
    env = {"DOCKER_CONFIG": str(docker), "HOME": str(tmp_path),
           "HPCCONT_AUTH_FILE": str(tmp_path / "hpccont.json")}
    assert auth.credentials_for("docker.io", env) == ("hubuser", "hubpw")
    assert auth.credentials_for("reg.example:5000", env) == ("u2", "p2")
    assert auth.credentials_for("other.example", env) is None
    auth.store_login("reg.example:5000", ("mine", "pw"), env)
    assert auth.credentials_for("reg.example:5000", env) == ("mine", "pw")
    assert (tmp_path / "hpccont.json").stat().st_mode & 0o777 == 0o600
    env2 = dict(env, APPTAINER_DOCKER_USERNAME="a", APPTAINER_DOCKER_PASSWORD="b")
    assert auth.credentials_for("reg.example:5000", env2) == ("a", "b")
    env3 = dict(env2, HPCCONT_DOCKER_USERNAME="h", HPCCONT_DOCKER_PASSWORD="i")
    assert auth.credentials_for("docker.io", env3) == ("h", "i")
    assert auth.list_logins(env) == [("reg.example:5000", "mine")]
    assert auth.remove_login("reg.example:5000", env)
    assert auth.credentials_for("reg.example:5000", env) == ("u2", "p2")


def test_helper_chosen_as_docker_does():
    doc = {"credHelpers": {"reg.example:5000": "pass", "plain.example": ""},
           "credsStore": "secretservice", "auths": {"plain.example": {}}}
    assert auth.helper_for(doc, "reg.example:5000") == "pass"
    assert auth.helper_for(doc, "other.example") == "secretservice"
    assert auth.helper_for(doc, "plain.example") is None       # "": the auths entry
    assert auth.helper_for({"auths": {}}, "reg.example:5000") is None
    assert auth.server_url("docker.io") == "https://index.docker.io/v1/"
    assert auth.server_url("reg.example:5000") == "reg.example:5000"


def test_helper_names_are_program_names(tmp_path):
    with pytest.raises(RegistryError, match="not a program name"):
        auth.run_helper("../../bin/sh", "get", "x", "config.json", {"PATH": str(tmp_path)})
    with pytest.raises(RegistryError, match="docker-credential-nope .* not found on PATH"):
        auth.run_helper("nope", "get", "x", "config.json", {"PATH": str(tmp_path)})


@pytest.mark.parametrize("raw, body, reusable", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: a/b\r\n\r\nhello", b"hello", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"3;x=y\r\nhel\r\n2\r\nlo\r\n0\r\nTrailer: t\r\n\r\n", b"hello", True),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello", b"hello", False),
    (b"HTTP/1.0 200 OK\r\n\r\nhello", b"hello", False),
])
def test_quick_reader(raw, body, reusable):
    answer, again = quick._read_answer(io.BytesIO(raw), 1 << 20)
    assert (answer.status, answer.body, again) == (200, body, reusable)


@pytest.mark.parametrize("raw", [
    b"", b"SSH-2.0-OpenSSH\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
])
def test_quick_reader_leaves_odd_answers_to_the_client(raw):
    with pytest.raises(quick._Unreadable):
        quick._read_answer(io.BytesIO(raw), 1 << 20)


def test_quick_netloc():
    assert quick.split_netloc("reg.example:5000", 443) == ("reg.example", 5000)
    assert quick.split_netloc("reg.example", 443) == ("reg.example", 443)
    assert quick.split_netloc("[::1]:5000", 443) == ("::1", 5000)
    assert quick.split_netloc("[::1]", 80) == ("::1", 80)


def test_platform_selection():
    index = {"manifests": [
        {"digest": "sha256:" + "1" * 64, "platform": {"os": "linux", "architecture": "amd64"}},
        {"digest": "sha256:" + "2" * 64,
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"digest": "sha256:" + "3" * 64, "platform": {"os": "unknown", "architecture": "unknown"}},
    ]}
    assert pull.select_platform(index, pull.parse_platform("amd64"), "x")["digest"][-1] == "1"
    assert pull.select_platform(index, pull.parse_platform("aarch64"), "x")["digest"][-1] == "2"
    assert pull.select_platform(index, pull.parse_platform("linux/arm64/v8"), "x")["digest"][-1] == "2"
    with pytest.raises(RegistryError, match="linux/amd64, linux/arm64/v8"):
        pull.select_platform(index, pull.parse_platform("s390x"), "x")


def test_exec_path_imports_no_registry_code(busybox_sif, install):
    code = ("import sys; sys.argv=['hpccont','exec','--dry-run',%r,'true'];"
            "from hpccont.cli import main;"
            "rc=main.main(sys.argv[1:]);"
            # the package itself (a few lines: which names are registry references) may be
            "bad=[m for m in sys.modules if m.startswith('hpccont.image.registry.') or m in "
            "('http.client','ssl','hpccont.image.build.builder')];"
            "print('BAD', bad); sys.exit(1 if bad else 0)") % str(busybox_sif)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd="/", env={"PYTHONPATH": install["lib"], "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stdout + r.stderr
