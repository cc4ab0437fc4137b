"""Every bad input is one line and a non-zero exit, leaves no output file and nothing bad in
the cache: missing repository or tag, unreachable registry, TLS failures, plain HTTP, digest
mismatch, interrupted downloads, a full disk, bad references; site policy; cache commands."""
import gzip
import hashlib
import http.server
import json
import os
import subprocess
import threading
import time

import pytest

import regtools as rt
from regtools import cache_is_clean, one_line_error

pytestmark = pytest.mark.registry


def _no_output(d):
    left = [p.name for p in d.iterdir() if p.name not in ("cache", "home", "site", "small")]
    assert left == [], left


class FakeRegistry:
    """Plain-HTTP /v2/ server with broken images: bad/img (a blob whose bytes do not match
    its digest) and cut/img (a blob whose connection always drops half way)."""

    def __init__(self):
        layer = gzip.compress(rt.ocifixtures.layer_tar([("f", "file", "x" * 200000)]), mtime=0)
        config = b'{"architecture":"amd64","os":"linux","config":{}}'
        self.blobs = {}
        self.manifests = {}
        for name, mode in (("bad/img", "corrupt"), ("cut/img", "cut")):
            man = json.dumps({"schemaVersion": 2,
                              "mediaType": "application/vnd.oci.image.manifest.v1+json",
                              "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                         "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                                         "size": len(config)},
                              "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                          "digest": "sha256:" + hashlib.sha256(layer).hexdigest(),
                                          "size": len(layer)}]}).encode()
            self.manifests[name] = man
            self.blobs[(name, "sha256:" + hashlib.sha256(config).hexdigest())] = (config, "ok")
            self.blobs[(name, "sha256:" + hashlib.sha256(layer).hexdigest())] = (layer, mode)
        self.gets = 0
        fake = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                fake.handle(self)

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.host = f"127.0.0.1:{self.srv.server_address[1]}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def handle(self, h):
        parts = h.path.split("/")
        if h.path == "/v2/":
            return self.send(h, 200, b"{}")
        if "/manifests/" in h.path:
            name = "/".join(parts[2:-2])
            body = self.manifests.get(name)
            if body is None:
                return self.send(h, 404, b'{"errors":[{"code":"NAME_UNKNOWN"}]}')
            return self.send(h, 200, body, "application/vnd.oci.image.manifest.v1+json")
        if "/blobs/" in h.path:
            name, digest = "/".join(parts[2:-2]), parts[-1]
            data, mode = self.blobs[(name, digest)]
            self.gets += 1
            if mode == "corrupt":
                data = data[:-10] + b"0123456789"
            if mode == "cut":
                h.send_response(200)
                h.send_header("Content-Length", str(len(data)))
                h.end_headers()
                h.wfile.write(data[:len(data) // 2])
                h.wfile.flush()
                h.close_connection = True
                return
            return self.send(h, 200, data)
        self.send(h, 404, b"")

    @staticmethod
    def send(h, status, body, ctype="application/json"):
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def close(self):
        self.srv.shutdown()


@pytest.fixture(scope="module")
def fake():
    f = FakeRegistry()
    yield f
    f.close()


def test_missing_repository_and_tag(run_root, images, registry, root_env, tmp_path):
    line = one_line_error(run_root("pull", tmp_path / "a.sif",
                                   f"docker://{registry.host}/no/such-repo:v1", env=root_env))
    assert "not found" in line and "no/such-repo" in line
    line = one_line_error(run_root("pull", tmp_path / "b.sif",
                                   f"docker://{registry.host}/test/busybox:no-such-tag",
                                   env=root_env))
    assert "not found" in line and "no-such-tag" in line
    _no_output(tmp_path)


def test_unreachable_registry_fails_fast(run_root, root_env, tmp_path):
    port = rt.free_port()
    t = time.monotonic()
    line = one_line_error(run_root("pull", tmp_path / "a.sif", f"docker://127.0.0.1:{port}/x/y:1",
                                   env=root_env))
    assert time.monotonic() - t < 10
    assert f"cannot reach registry 127.0.0.1:{port}: connection refused" in line
    _no_output(tmp_path)


def test_tls_failures(run_root, images, fake, root_env, tmp_path):
    env = dict(root_env)
    env.pop("SSL_CERT_FILE")
    env["SSL_CERT_DIR"] = str(tmp_path / "empty-ca-dir")
    env["SSL_CERT_FILE"] = str(tmp_path / "no-ca.pem")
    line = one_line_error(run_root("pull", tmp_path / "a.sif", images["gzip"]["ref"], env=env))
    assert "TLS certificate verification failed" in line and "SSL_CERT_FILE" in line
    # TLS spoken to a plain-HTTP registry: the hint names --nohttps
    line = one_line_error(run_root("pull", tmp_path / "b.sif", f"docker://{fake.host}/bad/img:1",
                                   env=root_env))
    assert "--nohttps" in line
    _no_output(tmp_path)
    cache_is_clean(tmp_path / "cache")


def test_digest_mismatch_keeps_nothing(run_root, fake, root_env, tmp_path):
    line = one_line_error(run_root("pull", "--nohttps", tmp_path / "a.sif",
                                   f"docker://{fake.host}/bad/img:1", env=root_env))
    assert "digest mismatch" in line
    _no_output(tmp_path)
    cache_is_clean(tmp_path / "cache")
    assert not list((tmp_path / "cache" / "tmp").iterdir())
    # The manifest, and the config unless the mismatch stopped its download first (blobs are
    # fetched in parallel); never the bad layer (cache_is_clean checked each digest).
    assert 1 <= len(list((tmp_path / "cache" / "blob" / "sha256").iterdir())) <= 2


def test_interrupted_download_gives_up_cleanly(run_root, fake, root_env, tmp_path):
    env = dict(root_env, HPCCONT_REGISTRY_RETRIES="2")
    before = fake.gets
    line = one_line_error(run_root("pull", "--nohttps", tmp_path / "a.sif",
                                   f"docker://{fake.host}/cut/img:1", env=env))
    assert "interrupted" in line and "resume" in line
    assert fake.gets - before >= 3                  # retried
    _no_output(tmp_path)
    cache_is_clean(tmp_path / "cache")


def test_disk_full(run_root, images, root_env, tmp_path, root_only):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=True)
    try:
        env = dict(root_env, HPCCONT_CACHEDIR=str(small / "cache"))
        line = one_line_error(run_root("pull", tmp_path / "a.sif", images["big"]["ref"], env=env))
        assert "no space left" in line
        _no_output(tmp_path)
        cache_is_clean(small / "cache")
        assert not list((small / "cache" / "tmp").iterdir())
    finally:
        subprocess.run(["umount", str(small)], check=True)


@pytest.mark.parametrize("uri,fragment", [
    ("docker://UPPER/Case:tag", "bad repository name"),
    ("docker://x/y:bad:tag", "bad"),
    ("docker://x/y@sha256:abc", "bad"),
    ("library://alpine", "not supported"),
    ("alpine", "expected docker://"),
])
def test_bad_references(run_root, root_env, tmp_path, uri, fragment):
    line = one_line_error(run_root("pull", tmp_path / "a.sif", uri, env=root_env))
    assert fragment in line
    _no_output(tmp_path)


def _config(tmp_path, text):
    cfg = tmp_path / "hpccont.yaml"
    cfg.write_text(text)
    return str(cfg)


def test_allowed_registries(run_root, images, registry, root_env, tmp_path, root_only):
    env = dict(root_env, HPCCONT_CONFIG=_config(tmp_path, "registry:\n  allowed: [ghcr.io]\n"))
    r = run_root("pull", tmp_path / "a.sif", images["gzip"]["ref"], env=env)
    assert r.returncode == 6 and "not allowed by the site" in one_line_error(r)
    env["HPCCONT_CONFIG"] = _config(tmp_path, f"registry:\n  allowed: ['{registry.host}/test']\n")
    assert run_root("pull", tmp_path / "b.sif", images["gzip"]["ref"], env=env).returncode == 0


def test_compute_node_pulls_forbidden_uses_cache_only(run_root, images, registry, root_env,
                                                      tmp_path, root_only):
    cfg = _config(tmp_path, "registry:\n  compute_node_pulls: false\n")
    env = dict(root_env, HPCCONT_CONFIG=cfg)
    assert run_root("pull", tmp_path / "login.sif", images["gzip"]["ref"], env=env).returncode == 0
    job = dict(env, SLURM_JOB_ID="42")
    mark = registry.mark()
    r = run_root("pull", tmp_path / "job.sif", images["gzip"]["ref"], env=job)
    assert r.returncode == 0, r.stderr
    assert registry.log_since(mark).count("response completed") == 0
    line = one_line_error(run_root("pull", tmp_path / "x.sif", images["zstd"]["ref"], env=job))
    assert "not in the cache" in line and "compute_node_pulls" in line


def test_site_cache_is_used_and_never_written(run_root, images, registry, root_env, tmp_path,
                                              root_only):
    site = tmp_path / "site"
    fill = dict(root_env, HPCCONT_CACHEDIR=str(site))
    assert run_root("pull", tmp_path / "fill.sif", images["many"]["ref"], env=fill).returncode == 0
    subprocess.run(["chmod", "-R", "a-w", str(site)], check=True)
    env = dict(root_env, HPCCONT_CONFIG=_config(tmp_path, f"registry:\n  site_cache: {site}\n"))
    mark = registry.mark()
    r = run_root("pull", tmp_path / "u.sif", images["many"]["ref"], env=env)
    assert r.returncode == 0, r.stderr
    assert "/blobs/" not in registry.log_since(mark)
    assert (tmp_path / "u.sif").read_bytes() == (tmp_path / "fill.sif").read_bytes()
    assert not list((tmp_path / "cache" / "sif").glob("*.sif"))
    subprocess.run(["chmod", "-R", "u+w", str(site)], check=True)


def test_cache_list_and_clean(run_root, images, root_env, tmp_path):
    assert run_root("pull", tmp_path / "a.sif", images["gzip"]["ref"], env=root_env).returncode == 0
    r = run_root("cache", "list", env=root_env)
    assert r.returncode == 0 and "test/busybox:gzip" in r.stdout and "1 images" in r.stdout
    r = run_root("cache", "clean", "--days", "1", env=root_env)
    assert r.stdout.startswith("removed 0 entries")
    old = time.time() - 3 * 86400
    for p in (tmp_path / "cache").rglob("*"):
        os.utime(p, (old, old))
    r = run_root("cache", "clean", "--days", "2", "--type", "sif", env=root_env)
    assert r.stdout.startswith("removed 1 entries")
    assert run_root("cache", "list", env=root_env).stdout.count("\nsif ") == 0
    r = run_root("cache", "clean", env=root_env)
    assert r.returncode == 0
    assert not list((tmp_path / "cache" / "blob" / "sha256").iterdir())
    # the image still pulls (everything again)
    assert run_root("pull", "--force", tmp_path / "a.sif", images["gzip"]["ref"],
                    env=root_env).returncode == 0
