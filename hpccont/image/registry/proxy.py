"""HTTP proxies from the environment, as Go's net/http (ProxyFromEnvironment) has them.

Apptainer is a Go program; a site whose compute nodes reach registries through a proxy has
set the variables for it, so hpccont reads them the same way:

- ``HTTPS_PROXY`` (else ``https_proxy``) for https:// registries, ``HTTP_PROXY`` (else
  ``http_proxy``) for plain-HTTP ones (``--nohttps``); the upper-case name wins when both are
  set and not empty.  ``ALL_PROXY`` is not read (Go does not).
- ``NO_PROXY`` (else ``no_proxy``): comma-separated entries; ``*`` (no proxy at all), an IP
  (``10.1.2.3``, ``[::1]:5000``), a CIDR range, a domain (``example.org`` matches it and its
  subdomains, ``.example.org`` and ``*.example.org`` only subdomains), each with an optional
  ``:PORT``.  ``localhost`` and loopback addresses are never proxied, listed or not.
- A proxy URL is ``http://[USER:PASSWORD@]HOST[:PORT]`` (no scheme: http; the port defaults
  to 80 as in Go); the credentials are percent-decoded and sent as Basic
  ``Proxy-Authorization``; errors name the proxy without the password.

https:// registries are reached through a CONNECT tunnel, TLS verified against the registry's
name inside it.  Plain-HTTP registries get absolute-URI requests sent to the proxy, as Go and
curl send them: a stock Squid allows CONNECT only to port 443 and a registry's port is rarely
that, while forwarding plain HTTP to any port is its default.

Nothing is imported or parsed when none of the proxy variables is set (the warm pull's case).
"""
from __future__ import annotations

import socket

from ...record import record
from .errors import RegistryError

DEFAULT_PORTS = {"http": 80, "https": 443}


class ProxyError(RegistryError):
    """A proxy was misconfigured, unreachable or refused the request; one line naming it."""


@record
class Proxy:
    host: str
    port: int
    variable: str            # the environment variable it came from
    user: str = ""
    password: str = ""

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def label(self) -> str:
        """The proxy as errors name it: never the password."""
        from urllib.parse import quote
        who = f"{quote(self.user, safe='')}@" if self.user else ""     # as in the URL
        return f"http://{who}{self.netloc} ({self.variable})"

    def authorization(self) -> str:
        """The Proxy-Authorization value, or "" without credentials."""
        if not self.user and not self.password:
            return ""
        import base64
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode("ascii")
        return f"Basic {token}"


# a Proxy printed anywhere (a debug line, a failed test's diff) must not show the password
Proxy.__repr__ = lambda self: f"Proxy({self.label()})"


# --- which proxy, if any ----------------------------------------------------------------------

def _env_any(environ, *names: str) -> tuple[str, str]:
    """(name, value) of the first variable set and not empty, as Go's getEnvAny."""
    for n in names:
        v = environ.get(n, "")
        if v:
            return n, v
    return "", ""


def for_url(scheme: str, netloc: str, environ) -> Proxy | None:
    """The proxy a request to ``scheme://netloc`` goes through, or None to connect directly.
    Raises ProxyError for a proxy URL that cannot be used."""
    if scheme == "https":
        name, value = _env_any(environ, "HTTPS_PROXY", "https_proxy")
    else:
        name, value = _env_any(environ, "HTTP_PROXY", "http_proxy")
    if not value:
        return None
    host, port = split_host_port(netloc, DEFAULT_PORTS.get(scheme, 443))
    if not use_proxy(host, port, _env_any(environ, "NO_PROXY", "no_proxy")[1]):
        return None
    return parse_proxy(value, name)


def split_host_port(netloc: str, default_port: int) -> tuple[str, int]:
    """``host[:port]`` or ``[v6]:port`` -> (lower-case host without brackets, port)."""
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif netloc.count(":") == 1:
        host, _, port = netloc.partition(":")
    else:
        host, port = netloc, ""
    return host.strip().lower(), int(port) if port.isdigit() else default_port


def _ip(host: str):
    """The address if ``host`` is an IP literal, else None."""
    if ":" not in host and not host.replace(".", "").isdigit():
        return None                    # a name: no need for ipaddress (the warm pull's path)
    import ipaddress
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _loopback(ip) -> bool:
    mapped = getattr(ip, "ipv4_mapped", None)     # ::ffff:127.0.0.1 is loopback, as in Go
    return (mapped or ip).is_loopback


def use_proxy(host: str, port: int, no_proxy: str) -> bool:
    """Whether a request to host:port goes through the proxy, by Go's httpproxy rules."""
    host = host.strip().lower()
    if host == "localhost":
        return False
    ip = _ip(host)
    if ip is not None and _loopback(ip):
        return False
    for entry in no_proxy.split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return False
        if _matches(entry, host, str(port), ip):
            return False
    return True


def _matches(entry: str, host: str, port: str, ip) -> bool:
    """One NO_PROXY entry against the request's host (``ip``: its address if a literal)."""
    if "/" in entry:                              # a CIDR range matches addresses only
        import ipaddress
        try:
            net = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return False
        return ip is not None and ip.version == net.version and ip in net
    phost, pport = _entry_host_port(entry)
    if not phost:
        return False                               # ":80": malformed, ignored as Go does
    if pport and pport != port:
        return False
    pip = _ip(phost)
    if pip is not None:
        return ip is not None and pip == ip
    if ip is not None:
        return False                               # a domain never matches an IP literal
    if phost.startswith("*."):
        phost = phost[1:]
    if phost.startswith("."):
        return host.endswith(phost)
    return host == phost or host.endswith("." + phost)


def _entry_host_port(entry: str) -> tuple[str, str]:
    """An entry's host and port ("" when none), like Go's net.SplitHostPort or the whole."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") and rest[1:].isdigit() else ""
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        if port.isdigit():
            return host, port
    return entry, ""


# --- the proxy URL ----------------------------------------------------------------------------

def parse_proxy(value: str, variable: str) -> Proxy:
    """``http://[user:pass@]host[:port][/]`` -> Proxy; a scheme-less value is http://."""
    raw = value.strip()
    scheme, sep, rest = raw.partition("://")
    if not sep:
        scheme, rest = "http", raw
    scheme = scheme.lower()
    userinfo, at, hostport = rest.rpartition("@")
    hostport = hostport.split("/", 1)[0]
    shown = f"{scheme}://{_hide_password(userinfo) + '@' if at else ''}{hostport}"
    if scheme == "https":
        raise ProxyError(f"proxy {shown} ({variable}): TLS to the proxy is not supported; "
                         "use an http:// proxy URL (the registry's TLS goes through it)")
    if scheme != "http":
        raise ProxyError(f"proxy {shown} ({variable}): unsupported proxy scheme {scheme!r}; "
                         "use http://HOST:PORT")
    host, port = _proxy_host_port(hostport, shown, variable)
    user, _, password = userinfo.partition(":")
    if "%" in userinfo:
        from urllib.parse import unquote
        user, password = unquote(user), unquote(password)
    return Proxy(host, port, variable, user, password)


def _proxy_host_port(hostport: str, shown: str, variable: str) -> tuple[str, int]:
    bad = ProxyError(f"malformed proxy URL {shown} ({variable}): "
                     "expected http://[USER:PASSWORD@]HOST[:PORT]")
    if hostport.startswith("["):
        host, close, rest = hostport[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise bad
        port = rest[1:] if rest else None
    elif ":" in hostport:
        host, _, port = hostport.partition(":")
    else:
        host, port = hostport, None
    if not host or any(c in host for c in " \t?#[]@"):
        raise bad
    if port is None:
        return host.lower(), 80
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise bad
    return host.lower(), int(port)


def _hide_password(userinfo: str) -> str:
    user, sep, _ = userinfo.partition(":")
    return f"{user}:***" if sep else user


# --- talking to it ----------------------------------------------------------------------------

def connect(proxy: Proxy, timeout: float):
    """A TCP connection to the proxy; a failure carries the proxy, for the error message."""
    try:
        sock = socket.create_connection((proxy.host, proxy.port), timeout=timeout)
    except OSError as e:
        e.hpccont_proxy = proxy
        raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def tunnel(proxy: Proxy, host: str, port: int, timeout: float):
    """A socket to host:port through the proxy (CONNECT), ready for TLS."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    sock = connect(proxy, timeout)
    try:
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if proxy.authorization():
            lines.append(f"Proxy-Authorization: {proxy.authorization()}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        status, reason = _read_connect_answer(sock, proxy)
    except OSError as e:
        sock.close()
        e.hpccont_proxy = proxy
        raise
    except BaseException:
        sock.close()
        raise
    if not 200 <= status < 300:
        sock.close()
        raise refused(proxy, status, reason, target)
    return sock


def _read_connect_answer(sock, proxy: Proxy) -> tuple[int, str]:
    """Status and reason of the CONNECT answer, read byte by byte up to the blank line: what
    follows belongs to the tunnel (the TLS handshake), so nothing past it may be consumed."""
    head = b""
    while not head.endswith(b"\r\n\r\n") and not head.endswith(b"\n\n"):
        b = sock.recv(1)
        if not b:
            raise ProxyError(f"proxy {proxy.label()} closed the connection during CONNECT")
        head += b
        if len(head) > 65536:
            raise ProxyError(f"proxy {proxy.label()}: CONNECT answer too long")
    parts = head.split(b"\n", 1)[0].decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ProxyError(f"proxy {proxy.label()} did not answer CONNECT in HTTP")
    return int(parts[1]), (parts[2].strip() if len(parts) > 2 else "")


def refused(proxy: Proxy, status: int, reason: str, target: str) -> ProxyError:
    """One line for a proxy's refusal (of a CONNECT, or of a forwarded request)."""
    why = f"{status} {reason}".strip()
    if status == 407 and proxy.user:
        return ProxyError(f"proxy {proxy.label()} refused the credentials of user "
                          f"{proxy.user!r} ({why})")
    if status == 407:
        return ProxyError(f"proxy {proxy.label()} requires authentication ({why}): put the "
                          "credentials in the URL, http://USER:PASSWORD@HOST:PORT")
    return ProxyError(f"proxy {proxy.label()} refused the connection to {target} ({why})")
