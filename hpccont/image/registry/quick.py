"""The one request of a warm pull, made without http.client.

A pull whose image is cached needs a single answer from the registry: the manifest its tag
names now (the tag may have moved; Apptainer asks too).  http.client imports the e-mail
package for its header parser, ~20 ms: a fifth of such a pull.  This module sends that GET on
a plain socket (TLS verified with the same context as client.py) and handles only the plain
case, a 200 answer with a body.  Anything else (a 401 challenge, a redirect, a 5xx, a refused
or broken connection, an answer it cannot read) goes to the full client (client.py), which
has the auth flows, the retries and the error messages; the open connection and the 401's
challenge go with it, so the registry is not asked twice.  Through a proxy (proxy.py) the
request goes the way the full client sends it: a CONNECT tunnel, or an absolute URI.
"""
from __future__ import annotations

import socket
import ssl
import threading

from ...record import record

# What a manifest request accepts, in the order client.py sends them.
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
MAX_MANIFEST = 4 << 20
MAX_HEAD = 64 << 10            # status line and headers

_ssl_context = None
_ssl_lock = threading.Lock()


def ssl_context() -> ssl.SSLContext:
    """The process's one verifying context (system CAs, or SSL_CERT_FILE / SSL_CERT_DIR)."""
    global _ssl_context
    with _ssl_lock:
        if _ssl_context is None:
            _ssl_context = ssl.create_default_context()
        return _ssl_context


def user_agent() -> str:
    from ... import __version__
    return f"hpccont/{__version__}"


# The quick request's own limit: a registry that accepts the connection and then says nothing
# costs this much before the full client (with the full timeout and its retries) takes over,
# not a second full timeout.
FIRST_TRY_S = 10.0


def timeout_of(environ) -> float:
    """The socket timeout: HPCCONT_REGISTRY_TIMEOUT seconds (default 60)."""
    try:
        value = float(environ.get("HPCCONT_REGISTRY_TIMEOUT", "") or 60)
    except ValueError:
        return 60.0
    return value if value > 0 else 60.0


@record
class Answer:
    status: int
    headers: dict            # lower-case name -> value (repeated headers joined by ", ")
    body: bytes


@record
class Handover:
    """What the full client takes over when this module stops: a connection to the API host
    that is free for the next request (or None), and the challenge of a 401 answer ("")."""
    sock: object = None
    challenge: str = ""


class _Unreadable(Exception):
    """An answer this module does not read; the full client asks again."""


def split_netloc(netloc: str, default_port: int) -> tuple[str, int]:
    """``host[:port]`` or ``[v6]:port`` -> (host, port)."""
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = netloc.rpartition(":") if netloc.count(":") == 1 else (netloc, "", "")
    if not port.isdigit():
        return host, default_port
    return host, int(port)


def connect(scheme: str, netloc: str, timeout: float, via=None):
    """A connection for requests to ``scheme://netloc``: direct, or through the proxy ``via``
    (proxy.py): a CONNECT tunnel for https, the proxy itself for plain HTTP."""
    host, port = split_netloc(netloc, 443 if scheme == "https" else 80)
    if via is not None:
        from . import proxy
        if scheme != "https":
            return proxy.connect(via, timeout)
        sock = proxy.tunnel(via, host, port, timeout)
    else:
        sock = socket.create_connection((host, port), timeout=timeout)
        # As http.client does: without it, Nagle holds the request behind the handshake's
        # last segment until the server's delayed ACK, 40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if scheme != "https":
        return sock
    try:
        return ssl_context().wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def get(sock, netloc: str, target: str, headers: dict, limit: int) -> tuple[Answer, bool]:
    """One GET on ``sock``: (the answer, whether the connection is free for another request)."""
    lines = [f"GET {target} HTTP/1.1", f"Host: {netloc}", "Accept-Encoding: identity"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    f = sock.makefile("rb")
    try:
        return _read_answer(f, limit)
    finally:
        f.close()          # the socket stays open: the full client may take it over


def _read_answer(f, limit: int) -> tuple[Answer, bool]:
    status_line = f.readline(MAX_HEAD)
    parts = status_line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise _Unreadable("no HTTP status line")
    status = int(parts[1])
    headers: dict = {}
    size = len(status_line)
    while True:
        line = f.readline(MAX_HEAD)
        size += len(line)
        if not line or size > MAX_HEAD:
            raise _Unreadable("headers cut short or too long")
        if line in (b"\r\n", b"\n"):
            break
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise _Unreadable("bad header line")
        name, value = name.strip().lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if status < 200 or status in (204, 304):
        raise _Unreadable("no body expected")     # 1xx and the body-less answers: rare here
    body, framed = _read_body(f, headers, limit)
    reusable = framed and parts[0] == "HTTP/1.1" and \
        "close" not in headers.get("connection", "").lower()
    return Answer(status, headers, body), reusable


def _read_body(f, headers: dict, limit: int) -> tuple[bytes, bool]:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _read_chunked(f, limit), True
    length = headers.get("content-length", "")
    if length.isdigit():
        n = int(length)
        if n > limit:
            raise _Unreadable("answer too large")
        body = f.read(n)
        if len(body) != n:
            raise _Unreadable("connection closed mid-answer")
        return body, True
    body = f.read(limit + 1)          # neither: the body ends with the connection
    if len(body) > limit:
        raise _Unreadable("answer too large")
    return body, False


def _read_chunked(f, limit: int) -> bytes:
    out = bytearray()
    while True:
        line = f.readline(1024).split(b";", 1)[0].strip()
        try:
            n = int(line, 16)
        except ValueError:
            raise _Unreadable("bad chunk size") from None
        if n == 0:
            break
        if len(out) + n > limit:
            raise _Unreadable("answer too large")
        chunk = f.read(n)
        if len(chunk) != n or f.read(2) != b"\r\n":
            raise _Unreadable("connection closed mid-answer")
        out += chunk
    while f.readline(MAX_HEAD) not in (b"\r\n", b"\n", b""):    # trailers
        pass
    return bytes(out)


def manifest(scheme: str, netloc: str, target: str, headers: dict,
             timeout: float, via=None) -> tuple[Answer | None, Handover]:
    """GET a manifest: (the 200 answer, or None for the full client to ask; the handover).
    ``via``: the proxy (proxy.py) for this registry, or None; a proxy's definite refusal
    is raised (ProxyError), as the full client would only get it again."""
    if via is not None and scheme != "https":
        # through an HTTP proxy, plain-HTTP requests name the whole URL (absolute-URI form)
        target = f"http://{netloc}{target}"
        if via.authorization():
            headers = {**headers, "Proxy-Authorization": via.authorization()}
    try:
        sock = connect(scheme, netloc, timeout, via)
    except (OSError, ValueError):
        return None, Handover()            # the full client retries and says what is wrong
    try:
        answer, reusable = get(sock, netloc, target, headers, MAX_MANIFEST)
    except (OSError, ValueError, _Unreadable):
        sock.close()
        return None, Handover()
    keep = sock if reusable else None
    if not reusable:
        sock.close()
    if answer.status == 200:
        return answer, Handover(keep)
    if answer.status == 407 and via is not None:
        if keep is not None:
            keep.close()
        from .proxy import refused
        raise refused(via, 407, "Proxy Authentication Required", netloc)
    challenge = answer.headers.get("www-authenticate", "") if answer.status == 401 else ""
    return None, Handover(keep, challenge)


def check_manifest(body: bytes, content_type: str, named: str, target: str,
                   label: str) -> tuple[bytes, str, str]:
    """(body, media type, digest) of a manifest answer; the digest is computed from the body and
    checked against the one asked for or the one the registry names (Docker-Content-Digest)."""
    import hashlib
    import json
    from .errors import RegistryError
    if len(body) > MAX_MANIFEST:
        raise RegistryError(f"{label}: manifest larger than {MAX_MANIFEST >> 20} MiB")
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    if target.startswith("sha256:") and digest != target:
        raise RegistryError(f"{label}: digest mismatch: manifest has {digest}, "
                            f"expected {target}")
    if named.startswith("sha256:") and not target.startswith("sha256:") and named != digest:
        raise RegistryError(f"{label}: digest mismatch: manifest has {digest}, "
                            f"the registry says {named}")
    media = content_type.split(";")[0].strip()
    try:
        doc = json.loads(body)
    except ValueError:
        raise RegistryError(f"{label}: manifest is not JSON") from None
    if isinstance(doc, dict) and doc.get("mediaType"):
        media = doc["mediaType"]
    if isinstance(doc, dict) and doc.get("schemaVersion") == 1:
        raise RegistryError(f"{label}: Docker schema 1 manifests are not supported")
    return body, media, digest
