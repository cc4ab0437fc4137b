"""SIF images as OCI artifacts: push, pull back byte for byte, Apptainer's media types,
Bootstrap: oras; https:// SIF downloads."""
import hashlib
import http.server
import json
import os
import ssl
import threading

import pytest

import regtools as rt
from regtools import one_line_error

pytestmark = pytest.mark.registry


def _manifest(registry, repo, tag, certs):
    from hpccont.image.registry.client import Client
    os.environ["SSL_CERT_FILE"] = str(certs.ca)
    try:
        import hpccont.image.registry.quick as q
        q._ssl_context = None
        cl = Client(registry.host, creds=(rt.USER, rt.PASSWORD))
        body, media, digest = cl.get_manifest(repo, tag, label="test")
        cl.close()
    finally:
        os.environ.pop("SSL_CERT_FILE", None)
        q._ssl_context = None
    return json.loads(body), media


@pytest.mark.rootless
def test_push_pull_round_trip(hpccont_user, busybox_sif, registry, user_env, shared_tmp, certs):
    src = shared_tmp / "mine.sif"
    src.write_bytes(busybox_sif.read_bytes())
    src.chmod(0o644)
    uri = f"oras://{registry.host}/sifs/busybox:1.0"
    r = hpccont_user("push", src, uri, env=user_env)
    assert r.returncode == 0, r.stderr
    assert "pushed" in r.stdout
    doc, media = _manifest(registry, "sifs/busybox", "1.0", certs)
    assert media == "application/vnd.oci.image.manifest.v1+json"
    assert doc["config"]["mediaType"] == "application/vnd.sylabs.sif.config.v1+json"
    assert doc["config"]["digest"] == "sha256:" + hashlib.sha256(b"{}").hexdigest()
    (layer,) = doc["layers"]
    assert layer["mediaType"] == "application/vnd.sylabs.sif.layer.v1.sif"
    assert layer["digest"] == "sha256:" + hashlib.sha256(src.read_bytes()).hexdigest()
    assert layer["size"] == src.stat().st_size
    assert layer["annotations"]["org.opencontainers.image.title"] == "mine.sif"
    back = shared_tmp / "back.sif"
    r = hpccont_user("pull", back, uri, env=user_env)
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == src.read_bytes()
    r = hpccont_user("exec", back, "cat", "/etc/hostname", env=user_env)
    assert r.returncode == 0, r.stderr
    # pushing again uploads no blob; pulling again downloads none
    mark = registry.mark()
    assert hpccont_user("push", src, uri, env=user_env).returncode == 0
    assert hpccont_user("pull", "--force", back, uri, env=user_env).returncode == 0
    log = registry.log_since(mark)
    assert "blobs/uploads" not in log and "http.request.method=GET http.request.remoteaddr" \
        not in [l for l in log.splitlines() if "/blobs/sha256" in l]


@pytest.mark.rootless
def test_bootstrap_oras(hpccont_user, busybox_sif, registry, user_env, shared_tmp):
    uri = f"oras://{registry.host}/sifs/base:1"
    assert hpccont_user("push", busybox_sif, uri, env=user_env).returncode == 0
    d = shared_tmp / "o.def"
    d.write_text(f"Bootstrap: oras\nFrom: {registry.host}/sifs/base:1\n\n"
                 "%post\n    echo on-top > /layered\n")
    out = shared_tmp / "o.sif"
    r = hpccont_user("build", "-q", out, d, env=user_env)
    assert r.returncode == 0, r.stderr
    r = hpccont_user("exec", out, "cat", "/layered", "/etc/hostname", env=user_env)
    assert r.stdout.split() == ["on-top", "container"], r.stderr


def test_push_and_pull_refusals(run_root, busybox_sif, registry, images, root_env, tmp_path):
    text = tmp_path / "not-a-sif.txt"
    text.write_text("hello")
    line = one_line_error(run_root("push", text, f"oras://{registry.host}/sifs/x:1", env=root_env))
    assert "not a SIF file" in line
    line = one_line_error(run_root("push", busybox_sif, f"docker://{registry.host}/x:1",
                                   env=root_env))
    assert "oras://" in line
    # a container image through oras://, and a SIF artifact through docker://
    line = one_line_error(run_root("pull", tmp_path / "a.sif",
                                   images["gzip"]["ref"].replace("docker://", "oras://"),
                                   env=root_env))
    assert "not a SIF artifact" in line
    assert run_root("push", busybox_sif, f"oras://{registry.host}/sifs/y:1",
                    env=root_env).returncode == 0
    line = one_line_error(run_root("pull", tmp_path / "b.sif",
                                   f"docker://{registry.host}/sifs/y:1", env=root_env))
    assert "oras://" in line
    assert not list(tmp_path.glob("*.sif"))


class _FileHandler(http.server.BaseHTTPRequestHandler):
    files = {}

    def log_message(self, *a):
        pass

    def do_GET(self):
        data = self.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.end_headers()
            return
        start = 0
        rng = self.headers.get("Range", "")
        if rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


def test_https_sif_by_url(run_root, busybox_sif, certs, root_env, tmp_path):
    _FileHandler.files = {"/images/bb.sif": busybox_sif.read_bytes(), "/text": b"x" * 100}
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FileHandler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(certs.cert), str(certs.key))
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"https://127.0.0.1:{srv.server_address[1]}"
    try:
        r = run_root("pull", "--dir", tmp_path, f"{base}/images/bb.sif", env=root_env)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "bb.sif").read_bytes() == busybox_sif.read_bytes()
        line = one_line_error(run_root("pull", tmp_path / "n.sif", f"{base}/missing.sif",
                                       env=root_env))
        assert "404" in line
        line = one_line_error(run_root("pull", tmp_path / "t.sif", f"{base}/text", env=root_env))
        assert "not a SIF" in line
        assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache"
                      and p.name != "home") == ["bb.sif"]
    finally:
        srv.shutdown()
