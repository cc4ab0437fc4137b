"""A client of the OCI distribution API (``/v2/``) on http.client and ssl, nothing else.

- TLS is verified against the system CA store (``ssl.create_default_context``, which honours
  ``SSL_CERT_FILE`` and ``SSL_CERT_DIR``); plain HTTP only when asked (``--nohttps``).
- A 401 answers with a challenge (auth.py): Basic or Bearer; the token or the Basic header is
  kept per scope and sent with every later request to the registry host (not to redirect
  targets such as a CDN).
- Connections are kept alive, one per thread and host.  Transient failures (5xx, 429, resets,
  timeouts, a registry that went away after answering once) are retried with exponential
  backoff; a registry that never answered is reported at once.
- Proxies from the environment (proxy.py, Go's rules): https through a CONNECT tunnel, plain
  HTTP as absolute-URI requests to the proxy; decided per host, so a redirect to a CDN
  follows NO_PROXY for the CDN's name.
- Every error is a RegistryError with one line naming the registry and what went wrong.
"""
import http.client
import json
import os
import random
import socket
import ssl
import threading
import time
import urllib.parse
from typing import Dict, Optional

from ...record import record
from . import auth, proxy
from .errors import RegistryError
from .quick import MANIFEST_TYPES, check_manifest, ssl_context, timeout_of, user_agent

RETRY_STATUS = (429, 500, 502, 503, 504)
REDIRECTS = (301, 302, 303, 307, 308)


@record
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default) or default


def retries(environ=os.environ) -> int:
    try:
        return max(0, int(environ.get("HPCCONT_REGISTRY_RETRIES", "5")))
    except ValueError:
        return 5


def backoff(attempt: int) -> float:
    """0.5, 1, 2, 4, 8 s (with a little jitter), capped at 8 s."""
    return min(8.0, 0.5 * (2 ** attempt)) * (0.9 + 0.2 * random.random())


def describe_os_error(e: BaseException) -> str:
    via = getattr(e, "hpccont_proxy", None)
    if via is not None:               # the proxy, not the registry, could not be reached
        return f"proxy {via.label()}: {_describe(e)}"
    return _describe(e)


def _describe(e: BaseException) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {e.verify_message}"
    if isinstance(e, ssl.SSLError):
        return f"TLS error: {e.reason or e}"
    if isinstance(e, socket.gaierror):
        return "cannot resolve the host name"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(e, ConnectionResetError):
        return "connection reset"
    if isinstance(e, http.client.RemoteDisconnected):
        return "connection closed by the server"
    if isinstance(e, http.client.IncompleteRead):
        return "connection closed mid-transfer"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e) or type(e).__name__


def _permanent(e: BaseException) -> bool:
    """Errors retrying cannot fix."""
    return isinstance(e, (ssl.SSLCertVerificationError, socket.gaierror)) or (
        isinstance(e, ssl.SSLError) and "WRONG_VERSION_NUMBER" in str(e))


class Client:
    """One registry host; safe to share between threads."""

    def __init__(self, registry: str, *, api_host: Optional[str] = None, nohttps: bool = False,
                 creds="auto", environ=os.environ, timeout: Optional[float] = None):
        self.registry = registry
        self.host = api_host or registry
        self.scheme = "http" if nohttps else "https"
        self.creds = auth.credentials_for(registry, environ) if creds == "auto" else creds
        self.timeout = timeout or timeout_of(environ)
        self.environ = environ
        self.retries = retries(environ)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._auth: Dict[str, str] = {}       # scope -> Authorization value
        # Basic credentials go with the first request already (one round trip less for
        # registries that use Basic); a Bearer challenge replaces them by tokens.
        self._basic: Optional[str] = auth.basic_header(self.creds) if self.creds else None
        self.contacted = False                 # it answered once: later refusals are transient
        self.user_agent = user_agent()

    # --- connections ------------------------------------------------------------------------
    def _conns(self) -> dict:
        c = getattr(self._local, "conns", None)
        if c is None:
            c = self._local.conns = {}
        return c

    def _conn(self, scheme: str, netloc: str):
        key = (scheme, netloc)
        conns = self._conns()
        conn = conns.get(key)
        if conn is None:
            via = proxy.for_url(scheme, netloc, self.environ)
            if scheme == "https":
                cls = _TunnelHTTPS if via else http.client.HTTPSConnection
                conn = cls(netloc, timeout=self.timeout, context=ssl_context())
            elif via:
                conn = _ForwardHTTP(via.host, via.port, timeout=self.timeout)
            else:
                conn = http.client.HTTPConnection(netloc, timeout=self.timeout)
            conn._hpccont_proxy = via
            conn._hpccont_used = False
            conns[key] = conn
        return conn

    def drop(self, url: Optional[str] = None) -> None:
        """Close this thread's connections (after an error or a half-read response)."""
        conns = self._conns()
        for key in list(conns):
            if url is None or key == _split(url)[:2]:
                try:
                    conns[key].close()
                except OSError:
                    pass
                del conns[key]

    def close(self) -> None:
        self.drop()

    def take_over(self, handover, scope: Optional[str]) -> None:
        """Continue where quick.py stopped: its free connection becomes this thread's to the
        API host, and a 401 challenge it got is answered (a token fetched) before the request
        is sent again."""
        if handover.sock is not None:
            conn = self._conn(self.scheme, self.host)
            conn.sock = handover.sock          # http.client connects only when it has none
            conn._hpccont_used = True          # stale: a reset is retried on a new connection
        if handover.challenge:
            self._authenticate(handover.challenge, scope)

    def url(self, path: str) -> str:
        return path if "://" in path else f"{self.scheme}://{self.host}{path}"

    # --- one exchange -----------------------------------------------------------------------
    def _send(self, method: str, url: str, headers: dict, body):
        scheme, netloc, target = _split(url)
        for fresh in (False, True):
            conn = self._conn(scheme, netloc)
            reused = conn._hpccont_used
            try:
                if hasattr(body, "seek"):
                    body.seek(0)
                if isinstance(conn, _ForwardHTTP):
                    target, headers = _forwarded(url, headers, conn._hpccont_proxy)
                conn.request(method, target, body=body, headers=headers)
                resp = conn.getresponse()
                conn._hpccont_used = True
                if resp.status == 407 and isinstance(conn, _ForwardHTTP):
                    self.drop(url)
                    raise proxy.refused(conn._hpccont_proxy, 407, resp.reason, netloc)
                return resp
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                    http.client.CannotSendRequest, http.client.ResponseNotReady):
                self.drop(url)
                if not reused or fresh:
                    raise
            except BaseException:
                self.drop(url)
                raise
        raise AssertionError("unreachable")

    def request(self, method: str, path: str, *, headers: Optional[dict] = None, body=None,
                scope: Optional[str] = None, stream: bool = False, what: str = ""):
        """Send, following auth challenges, redirects and retries.  Returns a Reply (body
        read) or, with ``stream``, the open HTTPResponse of a 2xx/206 answer (read it to the
        end or call ``drop()``)."""
        url = self.url(path)
        what = what or f"{method} {path}"
        tried_auth = False
        redirects = 0
        attempt = 0
        while True:
            h = {"User-Agent": self.user_agent, **(headers or {})}
            if _split(url)[1] == self.host:
                value = self._auth_for(scope)
                if value:
                    h["Authorization"] = value
            try:
                resp = self._send(method, url, h, body)
            except RegistryError:
                raise
            except (OSError, http.client.HTTPException) as e:
                transient = not _permanent(e) and (
                    self.contacted or not isinstance(e, (ConnectionRefusedError,
                                                         socket.gaierror)))
                if transient and attempt < self.retries:
                    time.sleep(backoff(attempt))
                    attempt += 1
                    continue
                raise self.network_error(e, url) from None
            self.contacted = True
            status = resp.status
            if status == 401 and not tried_auth:
                resp.read()
                self._authenticate(resp.getheader("WWW-Authenticate", ""), scope)
                tried_auth = True
                continue
            if status in REDIRECTS and resp.getheader("Location"):
                resp.read()
                redirects += 1
                if redirects > 10:
                    raise RegistryError(f"{self.registry}: too many redirects for {what}")
                url = urllib.parse.urljoin(url, resp.getheader("Location"))
                if status == 303:
                    method, body = "GET", None
                continue
            if status in RETRY_STATUS and attempt < self.retries:
                resp.read()
                delay = backoff(attempt)
                after = resp.getheader("Retry-After", "")
                if after.isdigit():
                    delay = max(delay, min(30, int(after)))
                time.sleep(delay)
                attempt += 1
                continue
            if stream and 200 <= status < 300:
                return resp
            try:
                data = resp.read()
            except (OSError, http.client.HTTPException) as e:
                self.drop(url)
                if attempt < self.retries:
                    time.sleep(backoff(attempt))
                    attempt += 1
                    continue
                raise self.network_error(e, url) from None
            if status == 401:
                raise self.auth_error(what)
            return Reply(status, resp.headers, data)

    def network_error(self, e: BaseException, url: str) -> RegistryError:
        netloc = _split(url)[1]
        via = getattr(e, "hpccont_proxy", None)
        if via is not None:
            return proxy.ProxyError(f"cannot reach proxy {via.label()} for registry {netloc}: "
                                    f"{_describe(e)}")
        hint = ""
        if isinstance(e, ssl.SSLCertVerificationError):
            hint = " (a private CA: set SSL_CERT_FILE=CA.pem; a plain-HTTP registry: --nohttps)"
        elif isinstance(e, ssl.SSLError) and "WRONG_VERSION_NUMBER" in str(e):
            hint = " (the server speaks plain HTTP: use --nohttps)"
        return RegistryError(f"cannot reach registry {netloc}: {describe_os_error(e)}{hint}")

    def auth_error(self, what: str) -> RegistryError:
        if self.creds:
            return RegistryError(f"{self.registry}: access denied for user {self.creds[0]!r} "
                                 f"({what}): wrong credentials, or no access to the repository")
        return RegistryError(f"{self.registry}: authentication required ({what}): "
                             f"'hpccont registry login {self.registry}', or set "
                             "HPCCONT_DOCKER_USERNAME and HPCCONT_DOCKER_PASSWORD")

    # --- authentication ---------------------------------------------------------------------
    def _auth_for(self, scope: Optional[str]) -> Optional[str]:
        with self._lock:
            if self._basic:
                return self._basic
            return self._auth.get(scope or "")

    def _authenticate(self, challenge: str, scope: Optional[str]) -> None:
        kind, params = auth.parse_challenge(challenge)
        if kind == "basic":
            if not self.creds:
                raise self.auth_error("the registry asks for a username and password")
            with self._lock:
                self._basic = auth.basic_header(self.creds)
            return
        if kind != "bearer" or not params.get("realm"):
            raise RegistryError(f"{self.registry}: unsupported authentication challenge "
                                f"{challenge[:80]!r}")
        token = self.fetch_token(params, scope)
        with self._lock:
            self._basic = None
            self._auth[scope or ""] = f"Bearer {token}"

    def fetch_token(self, params: Dict[str, str], scope: Optional[str]) -> str:
        query = []
        if params.get("service"):
            query.append(("service", params["service"]))
        scopes = []
        for s in (params.get("scope", "").split(" ") + [scope or ""]):
            if s and s not in scopes:
                scopes.append(s)
        query += [("scope", s) for s in scopes]
        realm = params["realm"]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        headers = {"User-Agent": self.user_agent}
        if self.creds:
            headers["Authorization"] = auth.basic_header(self.creds)
        attempt = 0
        while True:
            try:
                resp = self._send("GET", url, headers, None)
                data = resp.read()
            except (OSError, http.client.HTTPException) as e:
                if not _permanent(e) and attempt < self.retries and not isinstance(
                        e, ConnectionRefusedError):
                    time.sleep(backoff(attempt))
                    attempt += 1
                    continue
                raise RegistryError(f"token service {_split(url)[1]} of {self.registry}: "
                                    f"{describe_os_error(e)}") from None
            if resp.status in RETRY_STATUS and attempt < self.retries:
                time.sleep(backoff(attempt))
                attempt += 1
                continue
            break
        if resp.status in (401, 403):
            if self.creds:
                raise RegistryError(f"{self.registry}: wrong username or password for user "
                                    f"{self.creds[0]!r} (token service refused them)")
            raise self.auth_error("token service refused anonymous access")
        if resp.status != 200:
            raise RegistryError(f"token service of {self.registry} answered HTTP {resp.status}")
        try:
            doc = json.loads(data)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not token:
            raise RegistryError(f"token service of {self.registry} gave no token")
        return token

    # --- the API ----------------------------------------------------------------------------
    def ping(self) -> None:
        """GET /v2/: checks reachability and, with credentials, that they are accepted."""
        r = self.request("GET", "/v2/", what="login check")
        if r.status == 404:
            raise RegistryError(f"{self.registry}: not an OCI registry (no /v2/ endpoint)")
        if r.status >= 400:
            raise RegistryError(f"{self.registry}: /v2/ answered HTTP {r.status}")

    def get_manifest(self, repo: str, target: str, *, label: str):
        """(body, media type, digest) of a manifest or index; the digest is computed from the
        body and checked against the one asked for or the one the registry names."""
        r = self.request("GET", f"/v2/{repo}/manifests/{target}", scope=pull_scope(repo),
                         headers={"Accept": ", ".join(MANIFEST_TYPES)}, what=f"manifest of {label}")
        if r.status != 200:
            raise status_error(r, label, "manifest")
        return check_manifest(r.body, r.header("Content-Type"), r.header("Docker-Content-Digest"),
                              target, label)

    def open_blob(self, repo: str, digest: str, offset: int = 0, *, label: str):
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        resp = self.request("GET", f"/v2/{repo}/blobs/{digest}", headers=headers,
                            scope=pull_scope(repo), stream=True, what=f"blob {digest[:19]}")
        if isinstance(resp, Reply):
            if resp.status == 416 and offset:
                return None    # the partial file is no prefix: start again
            raise status_error(resp, label, f"blob {digest}")
        return resp

    def blob_exists(self, repo: str, digest: str, *, scope: Optional[str] = None) -> bool:
        r = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", scope=scope or pull_scope(repo),
                         what=f"blob {digest[:19]}")
        return r.status == 200

    def upload_blob(self, repo: str, digest: str, body, size: int, *, label: str) -> None:
        scope = push_scope(repo)
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/", scope=scope,
                         headers={"Content-Length": "0"}, body=b"", what="start upload")
        if r.status != 202 or not r.header("Location"):
            raise status_error(r, label, "blob upload")
        loc = urllib.parse.urljoin(self.url(f"/v2/{repo}/blobs/uploads/"), r.header("Location"))
        loc += ("&" if "?" in loc else "?") + urllib.parse.urlencode({"digest": digest})
        r = self.request("PUT", loc, scope=scope, body=body,
                         headers={"Content-Type": "application/octet-stream",
                                  "Content-Length": str(size)}, what="upload")
        if r.status not in (201, 204):
            raise status_error(r, label, f"blob upload {digest}")

    def put_manifest(self, repo: str, tag: str, body: bytes, media_type: str, *,
                     label: str) -> str:
        r = self.request("PUT", f"/v2/{repo}/manifests/{tag}", scope=push_scope(repo),
                         body=body, headers={"Content-Type": media_type,
                                             "Content-Length": str(len(body))},
                         what="manifest upload")
        if r.status not in (200, 201, 202):
            raise status_error(r, label, "manifest upload")
        return r.header("Docker-Content-Digest")


def pull_scope(repo: str) -> str:
    return f"repository:{repo}:pull"


def push_scope(repo: str) -> str:
    return f"repository:{repo}:pull,push"


def status_error(r: Reply, label: str, what: str) -> RegistryError:
    """One line for an HTTP error answer, with the registry's own error code if any."""
    codes, detail = [], ""
    try:
        doc = json.loads(r.body)
        for e in doc.get("errors") or []:
            codes.append(str(e.get("code", "")))
            detail = detail or str(e.get("message", ""))
    except (ValueError, AttributeError, TypeError):
        pass
    if r.status == 404 or "MANIFEST_UNKNOWN" in codes or "NAME_UNKNOWN" in codes:
        if "NAME_UNKNOWN" in codes:
            return RegistryError(f"{label}: repository not found")
        if "BLOB_UNKNOWN" in codes or what.startswith("blob"):
            return RegistryError(f"{label}: {what} not found in the registry")
        return RegistryError(f"{label}: not found (no such repository or tag)")
    if r.status == 403 or "DENIED" in codes or "UNAUTHORIZED" in codes:
        return RegistryError(f"{label}: access denied ({what})")
    text = f" {detail}" if detail else ""
    return RegistryError(f"{label}: {what}: HTTP {r.status}{(' ' + ','.join(codes)) if codes else ''}"
                         f"{(':' + text) if text else ''}")


class _TunnelHTTPS(http.client.HTTPSConnection):
    """HTTPS to the registry inside a CONNECT tunnel through the proxy; TLS is verified
    against the registry's name, as on a direct connection."""

    def connect(self):
        sock = proxy.tunnel(self._hpccont_proxy, self.host, self.port, self.timeout)
        try:
            self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


class _ForwardHTTP(http.client.HTTPConnection):
    """A connection to the proxy itself, for plain-HTTP requests in absolute-URI form."""

    def connect(self):
        self.sock = proxy.connect(self._hpccont_proxy, self.timeout)


def _forwarded(url: str, headers: dict, via) -> tuple:
    """The request target and headers of a plain-HTTP request sent to a proxy: the whole URL
    (http.client takes the Host header from it) and the proxy's credentials."""
    if via.authorization():
        headers = {**headers, "Proxy-Authorization": via.authorization()}
    return url, headers


def _split(url: str):
    p = urllib.parse.urlsplit(url)
    target = p.path or "/"
    if p.query:
        target += "?" + p.query
    return p.scheme, p.netloc, target
