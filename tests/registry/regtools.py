"""Real OCI registries for the tests: Debian's docker-registry (CNCF distribution 2.8) on
127.0.0.1 with TLS from a CA made here, htpasswd Basic auth or token (Bearer) auth with a
small token issuer in this process; OCI layouts written here and pushed with skopeo.

Nothing is trusted system-wide: clients get the CA through SSL_CERT_FILE (hpccont) and
--dest-cert-dir (skopeo).
"""
import base64
import gzip
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "build"))
import ocifixtures  # noqa: E402

USER, PASSWORD = "alice", "s3cret-pw"
SERVICE, ISSUER = "hpccont-test-registry", "hpccont-test-issuer"
# A registry name that only the proxy of test_proxy.py resolves (to 127.0.0.1), as a site's
# proxy resolves names its compute nodes cannot; the server certificate names it too.
PROXIED_NAME = "registry.hpccont.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def _run(argv, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {r.stderr.strip()[-2000:]}")
    return r


# --- certificates ----------------------------------------------------------------------------

class Certs:
    """A test CA, a server certificate for 127.0.0.1/localhost signed by it, and a token
    signing certificate signed by it."""

    def __init__(self, d: Path):
        d.mkdir(parents=True, exist_ok=True)
        self.dir = d
        self.ca, self.ca_key = d / "ca.pem", d / "ca.key"
        self.cert, self.key = d / "server.pem", d / "server.key"
        self.token_cert, self.token_key = d / "token.pem", d / "token.key"
        _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
              str(self.ca_key), "-out", str(self.ca), "-days", "3", "-subj", "/CN=hpccont test CA"])
        ext = d / "ext.cnf"
        ext.write_text(f"subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:{PROXIED_NAME}\n"
                       "basicConstraints=CA:FALSE\n")
        for cert, key, cn in ((self.cert, self.key, "127.0.0.1"),
                              (self.token_cert, self.token_key, "token signer")):
            csr = d / f"{cn.replace(' ', '_')}.csr"
            _run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                  "-out", str(csr), "-subj", f"/CN={cn}"])
            _run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey",
                  str(self.ca_key), "-CAcreateserial", "-out", str(cert), "-days", "3",
                  "-extfile", str(ext)])
        # skopeo reads CA files named *.crt from a directory
        self.cert_dir = d / "certs.d"
        self.cert_dir.mkdir(exist_ok=True)
        shutil.copy(self.ca, self.cert_dir / "ca.crt")
        for p in d.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        d.chmod(0o755)


# --- the registry ----------------------------------------------------------------------------

class Registry:
    """docker-registry serve, restartable on the same port and storage."""

    def __init__(self, d: Path, certs: Certs, auth: str = "htpasswd",
                 token_realm: str = "", tls: bool = True):
        self.dir, self.certs, self.auth, self.tls = d, certs, auth, tls
        d.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log = d / "registry.log"
        self.proc: Optional[subprocess.Popen] = None
        self.htpasswd = d / "htpasswd"
        _run(["htpasswd", "-Bbc", str(self.htpasswd), USER, PASSWORD])
        lines = ["version: 0.1", "log:", "  level: info", "  accesslog:", "    disabled: true",
                 "storage:", "  filesystem:", f"    rootdirectory: {d / 'storage'}",
                 "  delete:", "    enabled: true",
                 "http:", f"  addr: {self.host}"]
        if tls:
            lines += ["  tls:", f"    certificate: {certs.cert}", f"    key: {certs.key}"]
        if auth == "htpasswd":
            lines += ["auth:", "  htpasswd:", "    realm: hpccont-test",
                      f"    path: {self.htpasswd}"]
        elif auth == "token":
            lines += ["auth:", "  token:", f"    realm: {token_realm}",
                      f"    service: {SERVICE}", f"    issuer: {ISSUER}",
                      f"    rootcertbundle: {certs.ca}"]
        self.config = d / "config.yml"
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> "Registry":
        logf = open(self.log, "a")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(self.config)],
                                     stdout=logf, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        logf.close()
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def blob_gets(self, since: int = 0, digest: Optional[str] = None) -> List[dict]:
        """The blob GETs the registry answered (from its log, after offset ``since``): uri,
        status, bytes written."""
        out = []
        for line in self.log_since(since).splitlines():
            if 'msg="response completed"' not in line or "http.request.method=GET" not in line:
                continue
            m = re.search(r"http\.request\.uri=\"?(/v2/[^\s\"]+/blobs/(sha256:[0-9a-f]+))", line)
            if not m or (digest and m.group(2) != digest):
                continue
            st = re.search(r"http\.response\.status=(\d+)", line)
            wr = re.search(r"http\.response\.written=(\d+)", line)
            out.append({"uri": m.group(1), "digest": m.group(2),
                        "status": int(st.group(1)) if st else 0,
                        "written": int(wr.group(1)) if wr else 0})
        return out

    def mark(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def log_since(self, mark: int) -> str:
        with open(self.log, errors="replace") as f:
            f.seek(mark)
            return f.read()


# --- a token issuer (the Bearer flow Docker Hub uses) -------------------------------------

def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer:
    """HTTPS token endpoint: Basic credentials USER/PASSWORD get every action asked for;
    anonymous requests get pull on repositories under public/ only; wrong credentials 401."""

    def __init__(self, certs: Certs):
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        self.certs = certs
        self.key = serialization.load_pem_private_key(certs.token_key.read_bytes(), None)
        cert = x509.load_pem_x509_certificate(certs.token_cert.read_bytes())
        self.x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
        self.port = free_port()
        self.realm = f"https://127.0.0.1:{self.port}/token"
        self.requests: List[dict] = []
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                issuer.handle(self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(certs.cert), str(certs.key))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, h) -> None:
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(h.path).query)
        user = None
        authz = h.headers.get("Authorization", "")
        if authz.startswith("Basic "):
            u, _, p = base64.b64decode(authz[6:]).decode().partition(":")
            if (u, p) != (USER, PASSWORD):
                self.requests.append({"user": u, "ok": False})
                h.send_response(401)
                h.send_header("Content-Type", "application/json")
                h.end_headers()
                h.wfile.write(b'{"details": "wrong credentials"}')
                return
            user = u
        access = []
        for scope in q.get("scope", []):
            for part in scope.split(" "):
                kind, _, rest = part.partition(":")
                name, _, actions = rest.rpartition(":")
                if kind != "repository" or not name:
                    continue
                acts = [a for a in actions.split(",") if a]
                if user is None:
                    acts = [a for a in acts if a == "pull"] if name.startswith("public/") else []
                access.append({"type": "repository", "name": name, "actions": acts})
        self.requests.append({"user": user, "ok": True, "scope": q.get("scope", [])})
        token = self.token(user or "", access)
        body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def token(self, subject: str, access: list) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": self.x5c}
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = self.key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing}.{_b64url(sig)}"


# --- images -----------------------------------------------------------------------------------

def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def compress(layer: bytes, how: str) -> (bytes, str):
    base = "application/vnd.oci.image.layer.v1.tar"
    if how == "gzip":
        return gzip.compress(layer, compresslevel=6, mtime=0), base + "+gzip"
    if how == "zstd":
        r = subprocess.run(["zstd", "-q", "-c", "-3"], input=layer, capture_output=True,
                           check=True)
        return r.stdout, base + "+zstd"
    return layer, base


class Layout:
    """An OCI image layout directory, filled with images and indexes."""

    def __init__(self, d: Path):
        self.dir = d
        (d / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (d / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.index: List[dict] = []

    def blob(self, data: bytes) -> str:
        h = sha(data)
        p = self.dir / "blobs" / "sha256" / h
        if not p.exists():
            p.write_bytes(data)
        return f"sha256:{h}"

    def image(self, layers: List[bytes], compression: str = "gzip", arch: str = "amd64",
              env=None, entrypoint=None, cmd=None, labels=None, docker_types: bool = False
              ) -> dict:
        """Store an image; returns its manifest descriptor (not yet in the index)."""
        descs, diff_ids = [], []
        for layer in layers:
            data, mt = compress(layer, compression)
            if docker_types:
                mt = "application/vnd.docker.image.rootfs.diff.tar.gzip"
            descs.append({"mediaType": mt, "digest": self.blob(data), "size": len(data)})
            diff_ids.append(sha(layer))
        cfg = json.loads(ocifixtures.image_config(env=env, entrypoint=entrypoint, cmd=cmd,
                                                  labels=labels, diff_ids=diff_ids))
        cfg["architecture"] = arch
        config = json.dumps(cfg, sort_keys=True).encode()
        if docker_types:
            manifest = {"schemaVersion": 2,
                        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                   "digest": self.blob(config), "size": len(config)},
                        "layers": descs}
        else:
            manifest = {"schemaVersion": 2,
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                   "digest": self.blob(config), "size": len(config)},
                        "layers": descs}
        raw = json.dumps(manifest).encode()
        return {"mediaType": manifest["mediaType"], "digest": self.blob(raw), "size": len(raw),
                "platform": {"architecture": arch, "os": "linux"}}

    def tag(self, name: str, desc: dict) -> None:
        d = dict(desc)
        d["annotations"] = {"org.opencontainers.image.ref.name": name}
        self.index.append(d)
        self.write()

    def multiarch(self, descs: List[dict]) -> dict:
        idx = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
               "manifests": descs}
        raw = json.dumps(idx).encode()
        return {"mediaType": idx["mediaType"], "digest": self.blob(raw), "size": len(raw)}

    def write(self) -> None:
        (self.dir / "index.json").write_text(json.dumps({"schemaVersion": 2,
                                                         "manifests": self.index}))


def skopeo_push(layout: Layout, tag: str, registry: Registry, repo: str,
                all_platforms: bool = False, creds: bool = True, fmt: str = "") -> None:
    argv = ["skopeo", "copy", "--quiet", "--dest-cert-dir", str(registry.certs.cert_dir)]
    if not registry.tls:
        argv.append("--dest-tls-verify=false")
    if fmt:
        argv += ["--format", fmt]
    if creds:
        argv += ["--dest-creds", f"{USER}:{PASSWORD}"]
    if all_platforms:
        argv.append("--all")
    argv += ["--preserve-digests"] if all_platforms else []
    argv += [f"oci:{layout.dir}:{tag}", f"docker://{registry.host}/{repo}:{tag}"]
    env = dict(os.environ, HOME=str(layout.dir.parent))
    _run(argv, env=env, timeout=120)


def busybox_layers() -> List[bytes]:
    return ocifixtures.busybox_layers(Path(shutil.which("busybox") or "/bin/busybox"))


def big_layer(mib: int, seed: int = 1) -> bytes:
    """A layer with one incompressible file of ``mib`` MiB (deterministic)."""
    import random
    data = random.Random(seed).randbytes(mib << 20)
    return ocifixtures.layer_tar([("big", "dir", None), (f"big/file{seed}", "file", data)])


# --- a throttling TCP proxy (for interrupting downloads at a chosen point) -------------------

class SlowProxy:
    """Forwards 127.0.0.1:port to the registry at ``rate`` bytes/s (server to client)."""

    def __init__(self, upstream_port: int, rate: int):
        self.upstream, self.rate = upstream_port, rate
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                c.close()
                continue
            threading.Thread(target=relay, args=(c, u), daemon=True).start()
            threading.Thread(target=relay, args=(u, c, self.rate), daemon=True).start()

    def close(self):
        self.closed = True
        self.sock.close()


def kill_tree(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass


# --- checks shared by the registry tests (here, not in conftest: test modules importing
# ``conftest`` get whichever suite's was loaded last)

def one_line_error(r) -> str:
    """The command failed with exactly one stderr line; returns it."""
    assert r.returncode != 0, (r.stdout, r.stderr)
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def cache_is_clean(cache) -> None:
    """Every blob in the cache matches its digest, and no half-written file is left."""
    import hashlib
    blobs = cache / "blob" / "sha256"
    for p in blobs.iterdir() if blobs.is_dir() else ():
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name, p
    for p in (cache / "sif").iterdir() if (cache / "sif").is_dir() else ():
        assert not p.name.startswith("."), p


# --- a Docker credential helper ----------------------------------------------------------------

CRED_HELPER = r'''#!/usr/bin/python3
"""docker-credential-NAME as the docker-credential-helpers protocol has it: get/store/erase/
list on stdin/stdout, kept in $HPCTEST_CRED_STORE (JSON: server URL -> [user, secret]).
$HPCTEST_CRED_MODE: fail, hang (with a child holding the pipes), garbage, token."""
import json, os, subprocess, sys
NOT_FOUND = "credentials not found in native keychain"
action, data = sys.argv[1], sys.stdin.read()
store = os.environ["HPCTEST_CRED_STORE"]
with open(os.environ["HPCTEST_CRED_LOG"], "a") as log:
    log.write(f"{action} {json.loads(data)['ServerURL'] if action == 'store' else data}\n")
mode = os.environ.get("HPCTEST_CRED_MODE", "")
if mode == "fail":
    sys.exit("the keyring is locked")
if mode == "hang":
    subprocess.run(["sleep", "600"])
if mode == "garbage":
    print("<html>not json</html>")
    sys.exit(0)
try:
    with open(store) as f:
        creds = json.load(f)
except FileNotFoundError:
    creds = {}
def save():
    with open(store, "w") as f:
        json.dump(creds, f)
if action == "get":
    if data not in creds:
        print(NOT_FOUND)
        sys.exit(1)
    user = "<token>" if mode == "token" else creds[data][0]
    print(json.dumps({"ServerURL": data, "Username": user, "Secret": creds[data][1]}))
elif action == "store":
    doc = json.loads(data)
    creds[doc["ServerURL"]] = [doc["Username"], doc["Secret"]]
    save()
elif action == "erase":
    if data not in creds:
        print(NOT_FOUND)
        sys.exit(1)
    del creds[data]
    save()
elif action == "list":
    print(json.dumps({k: v[0] for k, v in creds.items()}))
else:
    sys.exit(f"unknown action {action}")
'''


class CredHelper:
    """``docker-credential-NAME`` in ``d``/bin, its store and its log, usable by any user."""

    def __init__(self, d: Path, name: str = "hpctest"):
        self.name = name
        self.bin = d / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        self.store, self.log = d / "cred-store.json", d / "cred-log"
        prog = self.bin / f"docker-credential-{name}"
        prog.write_text(CRED_HELPER)
        prog.chmod(0o755)
        for p in (self.store, self.log):
            p.write_text("{}" if p == self.store else "")
            p.chmod(0o666)
        for p in (d, self.bin):
            p.chmod(0o777)

    def env(self, base: dict, **kw) -> dict:
        e = {k: v for k, v in base.items() if not k.startswith("HPCCONT_DOCKER_")}
        e.update({"PATH": f"{self.bin}:{base.get('PATH', '/usr/bin:/bin')}",
                  "HPCTEST_CRED_STORE": str(self.store), "HPCTEST_CRED_LOG": str(self.log)})
        e.update(kw)
        return e

    def put(self, server: str, user: str, secret: str) -> None:
        creds = json.loads(self.store.read_text())
        creds[server] = [user, secret]
        self.store.write_text(json.dumps(creds))

    def calls(self) -> list:
        return self.log.read_text().splitlines()


def relay(src, dst, rate: int = 0, close: bool = True) -> None:
    """Copy ``src`` to ``dst`` until EOF (at most ``rate`` bytes/s when set), then shut both
    down (and close them, unless the caller still owns them)."""
    try:
        while True:
            data = src.recv(16384)
            if not data:
                break
            dst.sendall(data)
            if rate:
                time.sleep(len(data) / rate)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            if close:
                s.close()
