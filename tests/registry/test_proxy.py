"""Pulls through an HTTP proxy (HTTPS_PROXY, HTTP_PROXY, NO_PROXY as Go's net/http reads them):
a real `hpccont pull` as the unprivileged user through a small CONNECT / forwarding proxy run
here, the NO_PROXY bypass, the proxy's failures (unreachable, 407, 403, malformed URL), and the
NO_PROXY matching rules.

The proxied registry is named ``registry.hpccont.test``: only the proxy resolves that name (to
127.0.0.1), as a site proxy resolves names compute nodes cannot, so a pull that succeeds under
that name went through the proxy for every connection it made.  ``127.0.0.1`` itself is never
proxied (loopback, as in Go)."""
import base64
import os
import socket
import threading

import pytest

import regtools as rt
from regtools import cache_is_clean, one_line_error

pytestmark = [pytest.mark.registry]

PX_USER, PX_PASSWORD = "px user", "p@ss:w/rd"          # percent-encoded in the URL
PX_URL_CREDS = "px%20user:p%40ss%3Aw%2Frd"


class TestProxy:
    """CONNECT tunnels and absolute-URI forwarding on 127.0.0.1, in a thread.  Records every
    CONNECT target and every forwarded request line; ``auth`` (user, password) requires that
    Basic Proxy-Authorization; ``deny`` answers 403 to every request."""

    __test__ = False

    def __init__(self, auth=None, deny=False):
        self.auth, self.deny = auth, deny
        self.connects, self.forwarded, self.refused = [], [], []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.sock.close()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _upstream(hostport):
        host, _, port = hostport.rpartition(":")
        host = host.strip("[]")
        if host.endswith(".hpccont.test"):
            host = "127.0.0.1"
        u = socket.create_connection((host, int(port)), timeout=30)
        u.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)    # as real proxies relay
        return u

    def _authorized(self, headers):
        if self.auth is None:
            return True
        want = "Basic " + base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
        return headers.get("proxy-authorization") == want

    def _serve(self, c):
        try:
            head = _read_head(c)
            if head is None:
                return
            line, headers = head
            method, target, _ = line.split(" ", 2)
            if self.deny or not self._authorized(headers):
                status = "403 Forbidden" if self.deny else "407 Proxy Authentication Required"
                with self.lock:
                    self.refused.append((method, target, headers.get("proxy-authorization")))
                c.sendall(f"HTTP/1.1 {status}\r\nProxy-Authenticate: Basic realm=\"px\"\r\n"
                          "Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
                return
            if method == "CONNECT":
                self._tunnel(c, target)
            else:
                self._forward(c, method, target, headers)
        except OSError:
            pass
        finally:
            c.close()

    def _tunnel(self, c, target):
        with self.lock:
            self.connects.append(target)
        u = self._upstream(target)
        c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        t = threading.Thread(target=rt.relay, args=(u, c), kwargs={"close": False}, daemon=True)
        t.start()
        rt.relay(c, u, close=False)
        t.join(30)

    def _forward(self, c, method, target, headers):
        """One absolute-URI request sent on with Connection: close; the answer piped back."""
        with self.lock:
            self.forwarded.append(f"{method} {target}")
        assert target.startswith("http://"), target
        hostport, _, path = target[len("http://"):].partition("/")
        u = self._upstream(hostport if ":" in hostport else hostport + ":80")
        headers = {k: v for k, v in headers.items()
                   if k not in ("proxy-authorization", "connection", "proxy-connection")}
        lines = [f"{method} /{path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
        u.sendall(("\r\n".join(lines + ["Connection: close"]) + "\r\n\r\n").encode("latin-1"))
        rt.relay(u, c, close=False)

    def all_seen(self):
        return self.connects + self.forwarded + [r[1] for r in self.refused]


def _read_head(c):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(4096)
        if not chunk:
            return None
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = {}
    for h in head[1:]:
        k, _, v = h.partition(":")
        headers[k.strip().lower()] = v.strip()
    return head[0], headers


@pytest.fixture
def proxy():
    p = TestProxy()
    yield p
    p.close()


@pytest.fixture
def auth_proxy():
    p = TestProxy(auth=(PX_USER, PX_PASSWORD))
    yield p
    p.close()


def _proxied(ref, registry):
    """The reference with the registry under the name only the proxy resolves."""
    return ref.replace(registry.host, f"{rt.PROXIED_NAME}:{registry.port}")


def _env(user_env, **kw):
    e = dict(user_env)
    e.update(kw)
    return e


def _nothing_kept(shared_tmp):
    cache = shared_tmp / "cache"
    blobs = cache / "blob" / "sha256"
    assert not (blobs.is_dir() and list(blobs.iterdir()))
    assert not list(shared_tmp.glob("*.sif")) and not list(shared_tmp.glob("*.partial"))
    cache_is_clean(cache)


# --- pulls through the proxy ------------------------------------------------------------------

@pytest.mark.rootless
def test_pull_through_connect_tunnel_as_user(hpccont_user, images, registry, user_env,
                                             shared_tmp, proxy):
    ref = _proxied(images["many"]["ref"], registry)      # 14 layers: parallel downloads
    env = _env(user_env, HTTPS_PROXY=proxy.url)
    mark = registry.mark()
    r = hpccont_user("pull", shared_tmp / "a.sif", ref, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert len(registry.blob_gets(since=mark)) >= 14      # config + every layer
    assert proxy.connects and set(proxy.connects) == {f"{rt.PROXIED_NAME}:{registry.port}"}
    assert proxy.forwarded == [] and proxy.refused == []
    r = hpccont_user("exec", shared_tmp / "a.sif", "cat", "/opt/layer11", env=env)
    assert r.stdout.strip() == "11", r.stderr
    # the warm pull's one manifest request (quick.py) goes through the proxy too
    before = len(proxy.connects)
    mark = registry.mark()
    r = hpccont_user("pull", shared_tmp / "b.sif", ref, env=env)
    assert r.returncode == 0, r.stderr
    assert len(proxy.connects) == before + 1
    assert "/manifests/many" in registry.log_since(mark)
    assert "/blobs/" not in registry.log_since(mark)
    assert (shared_tmp / "a.sif").read_bytes() == (shared_tmp / "b.sif").read_bytes()


@pytest.mark.rootless
def test_basic_proxy_auth_with_percent_encoded_credentials(hpccont_user, images, registry,
                                                           user_env, shared_tmp, auth_proxy):
    url = f"http://{PX_URL_CREDS}@127.0.0.1:{auth_proxy.port}"
    # https_proxy (lower case) is read too; HTTPS_PROXY wins over it when both are set
    env = _env(user_env, HTTPS_PROXY=url, https_proxy=f"http://127.0.0.1:{rt.free_port()}")
    r = hpccont_user("pull", shared_tmp / "a.sif", _proxied(images["gzip"]["ref"], registry),
                     env=env)
    assert r.returncode == 0, r.stderr
    assert auth_proxy.connects and auth_proxy.refused == []
    env = _env(user_env, https_proxy=url)
    r = hpccont_user("pull", shared_tmp / "b.sif", _proxied(images["zstd"]["ref"], registry),
                     env=env)
    assert r.returncode == 0, r.stderr


@pytest.mark.rootless
def test_resumed_download_goes_through_the_proxy(hpccont_user, test_user, images, registry,
                                                 user_env, shared_tmp, proxy):
    """A partial blob left by an interrupted pull is resumed with Range through the tunnel."""
    ref = _proxied(images["resume"]["ref"], registry)
    env = _env(user_env, HTTPS_PROXY=proxy.url)
    first = _env(env, HPCCONT_CACHEDIR=str(shared_tmp / "first"))
    assert hpccont_user("pull", shared_tmp / "a.sif", ref, env=first).returncode == 0
    blob = max((shared_tmp / "first" / "blob" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    tmp = shared_tmp / "cache" / "tmp"
    tmp.mkdir(parents=True)
    partial = tmp / f"{blob.name}.partial"
    partial.write_bytes(blob.read_bytes()[:blob.stat().st_size // 2])
    for p in (shared_tmp / "cache", tmp, partial):
        os.chown(p, test_user.pw_uid, test_user.pw_gid)
    before, mark = len(proxy.connects), registry.mark()
    r = hpccont_user("pull", shared_tmp / "b.sif", ref, env=env)
    assert r.returncode == 0, r.stderr
    got = registry.blob_gets(since=mark, digest=f"sha256:{blob.name}")
    assert [g["status"] for g in got] == [206]
    assert len(proxy.connects) > before
    assert (shared_tmp / "a.sif").read_bytes() == (shared_tmp / "b.sif").read_bytes()
    cache_is_clean(shared_tmp / "cache")


@pytest.fixture(scope="module")
def plain_registry(reg_root, certs):
    """Plain HTTP, anonymous, with one image: for --nohttps through HTTP_PROXY."""
    r = rt.Registry(reg_root / "plain-proxy", certs, auth="none", tls=False).start()
    lay = rt.Layout(reg_root / "plain-proxy-layout")
    lay.tag("v1", lay.image(rt.busybox_layers(), cmd=["echo", "over-plain-http"]))
    rt.skopeo_push(lay, "v1", r, "plain/bb", creds=False)
    yield r
    r.stop()


@pytest.mark.rootless
def test_nohttps_pull_through_http_proxy_absolute_uris(hpccont_user, plain_registry, user_env,
                                                       shared_tmp, proxy):
    ref = f"docker://{rt.PROXIED_NAME}:{plain_registry.port}/plain/bb:v1"
    # HTTPS_PROXY is for https:// registries only: this one is never asked
    env = _env(user_env, HTTP_PROXY=proxy.url,
               HTTPS_PROXY=f"http://127.0.0.1:{rt.free_port()}")
    r = hpccont_user("pull", "--nohttps", shared_tmp / "a.sif", ref, env=env)
    assert r.returncode == 0, r.stderr
    assert proxy.connects == []
    base = f"http://{rt.PROXIED_NAME}:{plain_registry.port}/v2/plain/bb/"
    assert f"GET {base}manifests/v1" in proxy.forwarded
    assert sum(f.startswith(f"GET {base}blobs/sha256:") for f in proxy.forwarded) >= 2
    assert all(f.startswith(f"GET {base}") for f in proxy.forwarded)
    r = hpccont_user("run", shared_tmp / "a.sif", env=env)
    assert r.stdout.strip() == "over-plain-http", r.stderr
    # and the warm pull's one request is forwarded the same way
    before = len(proxy.forwarded)
    r = hpccont_user("pull", "--nohttps", shared_tmp / "b.sif", ref, env=env)
    assert r.returncode == 0, r.stderr
    assert proxy.forwarded[before:] == [f"GET {base}manifests/v1"]


# --- NO_PROXY ---------------------------------------------------------------------------------

@pytest.mark.rootless
def test_no_proxy_bypasses_the_proxy(hpccont_user, images, registry, user_env, shared_tmp,
                                     proxy):
    env = _env(user_env, HTTPS_PROXY=proxy.url, NO_PROXY="example.org, .hpccont.test")
    line = one_line_error(hpccont_user("pull", shared_tmp / "a.sif",
                                       _proxied(images["gzip"]["ref"], registry), env=env))
    # connected directly, where the name does not resolve: the proxy saw nothing
    assert f"cannot reach registry {rt.PROXIED_NAME}:{registry.port}" in line
    assert "cannot resolve" in line and "proxy" not in line
    assert proxy.all_seen() == []
    _nothing_kept(shared_tmp)
    # the registry's own address: loopback, never proxied (as Go), without any NO_PROXY
    env = _env(user_env, HTTPS_PROXY=proxy.url)
    r = hpccont_user("pull", shared_tmp / "b.sif", images["gzip"]["ref"], env=env)
    assert r.returncode == 0, r.stderr
    assert proxy.all_seen() == []
    # an entry for another port does not match: through the proxy
    env = _env(user_env, https_proxy=proxy.url, no_proxy=f"{rt.PROXIED_NAME}:1")
    r = hpccont_user("pull", shared_tmp / "c.sif", _proxied(images["gzip"]["ref"], registry),
                     env=env)
    assert r.returncode == 0, r.stderr
    assert proxy.connects


# --- the proxy's failures ---------------------------------------------------------------------

@pytest.mark.rootless
def test_proxy_407_without_and_with_wrong_credentials(hpccont_user, images, registry, user_env,
                                                      shared_tmp, auth_proxy):
    ref = _proxied(images["gzip"]["ref"], registry)
    env = _env(user_env, HTTPS_PROXY=auth_proxy.url)
    line = one_line_error(hpccont_user("pull", shared_tmp / "a.sif", ref, env=env))
    assert f"proxy http://127.0.0.1:{auth_proxy.port} (HTTPS_PROXY) requires authentication" \
        in line and "407" in line
    _nothing_kept(shared_tmp)
    env = _env(user_env, HTTPS_PROXY=f"http://px%20user:wrong-secret@127.0.0.1:{auth_proxy.port}")
    line = one_line_error(hpccont_user("pull", shared_tmp / "a.sif", ref, env=env))
    assert f"proxy http://px%20user@127.0.0.1:{auth_proxy.port} (HTTPS_PROXY) refused the " \
        "credentials of user 'px user'" in line
    assert "wrong-secret" not in line
    assert auth_proxy.connects == [] and auth_proxy.refused
    _nothing_kept(shared_tmp)


@pytest.mark.rootless
def test_proxy_407_for_plain_http_requests(hpccont_user, plain_registry, user_env, shared_tmp,
                                           auth_proxy):
    ref = f"docker://{rt.PROXIED_NAME}:{plain_registry.port}/plain/bb:v1"
    env = _env(user_env, http_proxy=f"http://px%20user:nope@127.0.0.1:{auth_proxy.port}")
    line = one_line_error(hpccont_user("pull", "--nohttps", shared_tmp / "a.sif", ref, env=env))
    assert "(http_proxy) refused the credentials of user 'px user'" in line
    assert "nope" not in line
    _nothing_kept(shared_tmp)


@pytest.mark.rootless
def test_proxy_403_unreachable_and_malformed(hpccont_user, images, registry, user_env,
                                             shared_tmp):
    ref = _proxied(images["gzip"]["ref"], registry)
    deny = TestProxy(deny=True)
    try:
        env = _env(user_env, HTTPS_PROXY=deny.url)
        line = one_line_error(hpccont_user("pull", shared_tmp / "a.sif", ref, env=env))
        assert f"proxy http://127.0.0.1:{deny.port} (HTTPS_PROXY) refused the connection to " \
            f"{rt.PROXIED_NAME}:{registry.port} (403 Forbidden)" in line
    finally:
        deny.close()
    _nothing_kept(shared_tmp)
    port = rt.free_port()
    env = _env(user_env, HTTPS_PROXY=f"http://me:hunter2@127.0.0.1:{port}")
    r = hpccont_user("pull", shared_tmp / "a.sif", ref, env=env)
    line = one_line_error(r)
    assert r.returncode == 4
    assert f"cannot reach proxy http://me@127.0.0.1:{port} (HTTPS_PROXY) for registry " \
        f"{rt.PROXIED_NAME}:{registry.port}: connection refused" in line
    assert "hunter2" not in line
    _nothing_kept(shared_tmp)
    for value, expect in (("http://me:hunter2@proxy.example:31x8", "malformed proxy URL "
                           "http://me:***@proxy.example:31x8 (HTTPS_PROXY)"),
                          ("http://:3128", "malformed proxy URL"),
                          ("https://proxy.example:3129", "TLS to the proxy is not supported"),
                          ("socks5://proxy.example:1080", "unsupported proxy scheme 'socks5'")):
        line = one_line_error(hpccont_user("pull", shared_tmp / "a.sif", ref,
                                           env=_env(user_env, HTTPS_PROXY=value)))
        assert expect in line and "hunter2" not in line, line
        _nothing_kept(shared_tmp)


# --- the rules, as Go's httpproxy has them ----------------------------------------------------

NO_PROXY_TABLE = [
    # (NO_PROXY, host, port, proxied?)
    ("", "registry.example.org", 443, True),
    ("", "localhost", 5000, False),                 # never proxied, as in Go
    ("", "127.0.0.1", 443, False),
    ("", "127.9.9.9", 443, False),
    ("", "::1", 443, False),
    ("", "::ffff:127.0.0.1", 443, False),
    ("", "10.0.0.1", 443, True),
    ("*", "registry.example.org", 443, False),
    ("*", "10.0.0.1", 443, False),
    ("example.org", "example.org", 443, False),    # a domain: itself and subdomains
    ("example.org", "registry.example.org", 443, False),
    ("example.org", "registryexample.org", 443, True),
    ("example.org", "example.org.evil.net", 443, True),
    (".example.org", "example.org", 443, True),     # a leading dot: subdomains only
    (".example.org", "a.b.example.org", 443, False),
    ("*.example.org", "example.org", 443, True),
    ("*.example.org", "registry.example.org", 443, False),
    ("EXAMPLE.org", "Registry.Example.ORG", 443, False),
    (" other.net , example.org ", "registry.example.org", 443, False),
    ("example.org:5000", "registry.example.org", 5000, False),   # host:port
    ("example.org:5000", "registry.example.org", 443, True),
    ("10.1.2.3", "10.1.2.3", 443, False),           # an IP literal
    ("10.1.2.3", "10.1.2.30", 443, True),
    ("10.1.2.3:5000", "10.1.2.3", 443, True),
    ("10.1.2.3:5000", "10.1.2.3", 5000, False),
    ("10.0.0.0/8", "10.200.0.1", 443, False),       # a CIDR range
    ("10.0.0.0/8", "11.0.0.1", 443, True),
    ("10.0.0.0/8", "ten.example.org", 443, True),   # ranges match addresses only
    ("fd00::/8", "fd12::1", 443, False),
    ("[fd12::1]:5000", "fd12::1", 5000, False),
    ("fd12::1", "fd12::1", 443, False),
    ("10.1.2.3", "example.org", 443, True),
    ("1.2.3.4.example.org", "1.2.3.4", 443, True),  # a domain never matches an IP
    (":5000", "example.org", 5000, True),           # malformed entries are ignored
    ("not/a/cidr", "example.org", 443, True),
]


@pytest.mark.parametrize("no_proxy,host,port,proxied", NO_PROXY_TABLE)
def test_no_proxy_rules(no_proxy, host, port, proxied):
    from hpccont.image.registry.proxy import use_proxy
    assert use_proxy(host, port, no_proxy) is proxied


def test_proxy_selection_from_the_environment():
    from hpccont.image.registry.proxy import for_url
    env = {"HTTPS_PROXY": "http://up:3128", "https_proxy": "http://low:3128",
           "http_proxy": "plain.example", "NO_PROXY": "", "no_proxy": "skip.example"}
    p = for_url("https", "registry.example.org", env)
    assert (p.host, p.port, p.variable) == ("up", 3128, "HTTPS_PROXY")
    p = for_url("http", "registry.example.org:5000", env)
    assert (p.host, p.port, p.variable) == ("plain.example", 80, "http_proxy")   # Go's default
    assert for_url("https", "skip.example", env) is None      # NO_PROXY empty: no_proxy read
    assert for_url("https", "x", {"HTTPS_PROXY": "", "https_proxy": "http://l:1"}).host == "l"
    assert for_url("https", "x", {"HTTP_PROXY": "http://p:1"}) is None
    assert for_url("https", "x", {"ALL_PROXY": "http://p:1"}) is None   # Go reads no ALL_PROXY
    assert for_url("https", "x", {}) is None
    p = for_url("https", "x", {"HTTPS_PROXY": "http://a%3Ab:c%40d@[fd00::1]:8080/"})
    assert (p.user, p.password, p.host, p.port) == ("a:b", "c@d", "fd00::1", 8080)
    assert p.authorization() == "Basic " + base64.b64encode(b"a:b:c@d").decode()
    assert "c@d" not in p.label() and p.label() == "http://a%3Ab@[fd00::1]:8080 (HTTPS_PROXY)"
    assert "c@d" not in repr(p)
    # a malformed proxy URL for a host NO_PROXY excludes is never looked at
    assert for_url("https", "skip.example", {"HTTPS_PROXY": "http://:x", "NO_PROXY": "*"}) is None


def test_registry_login_through_proxy(hpccont, images, registry, tmp_path, certs, proxy):
    """registry login (the full client's /v2/ check) goes through the tunnel too."""
    env = {"SSL_CERT_FILE": str(certs.ca), "HOME": str(tmp_path), "HTTPS_PROXY": proxy.url,
           "https_proxy": "", "NO_PROXY": "", "no_proxy": "",
           "HPCCONT_AUTH_FILE": str(tmp_path / "auth.json")}
    host = f"{rt.PROXIED_NAME}:{registry.port}"
    r = hpccont("registry", "login", "-u", rt.USER, "--password-stdin", host, env=env,
                input=rt.PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    assert proxy.connects == [host]
    assert os.path.exists(tmp_path / "auth.json")


def test_warm_path_request_goes_through_the_proxy(images, registry, plain_registry, certs,
                                                  proxy, monkeypatch):
    """quick.py's one manifest request is itself proxied (not left to the full client after a
    failed direct try): it answers, and the proxy carried it, in both modes."""
    import ssl
    from hpccont.image.registry import pull, quick, reference
    monkeypatch.setattr(quick, "_ssl_context", ssl.create_default_context(cafile=str(certs.ca)))
    env = {"HTTPS_PROXY": proxy.url, "HTTP_PROXY": proxy.url,
           "HPCCONT_DOCKER_USERNAME": rt.USER, "HPCCONT_DOCKER_PASSWORD": rt.PASSWORD,
           "HPCCONT_AUTH_FILE": "/nonexistent", "DOCKER_CONFIG": "/nonexistent"}
    for uri, nohttps in ((_proxied(images["gzip"]["ref"], registry), False),
                         (f"docker://{rt.PROXIED_NAME}:{plain_registry.port}/plain/bb:v1", True)):
        ref = reference.parse(uri)
        lazy = pull._LazyClient(ref, nohttps, False, env)
        try:
            got = lazy._quick_manifest(ref.repository, ref.tag, uri)
        finally:
            lazy.close()
        assert got is not None and got[2].startswith("sha256:"), uri
    target = f"{rt.PROXIED_NAME}:{registry.port}"
    assert proxy.connects == [target]
    assert proxy.forwarded == [f"GET http://{rt.PROXIED_NAME}:{plain_registry.port}"
                               "/v2/plain/bb/manifests/v1"]
