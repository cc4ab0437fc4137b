"""Registry credentials and the WWW-Authenticate challenge.

Where a username/password for a registry host comes from, first match wins:

1. ``HPCCONT_DOCKER_USERNAME``/``HPCCONT_DOCKER_PASSWORD`` (Apptainer's
   ``APPTAINER_DOCKER_USERNAME``/``_PASSWORD`` and ``SINGULARITY_DOCKER_*`` too): any registry;
2. ``hpccont registry login`` entries: ``$HPCCONT_AUTH_FILE`` or ``~/.hpccont/docker-config.json``
   (Docker's config.json format, mode 0600);
3. Docker's ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json`` (``auths``: base64
   ``user:password`` in ``auth``, or ``username``/``password``; Docker Hub's key is
   ``https://index.docker.io/v1/``).

In each of the two files, as in Docker: ``credHelpers[registry]``, else ``credsStore``, else
``auths``.  A credential helper is the program ``docker-credential-NAME`` on PATH, run as the
docker-credential-helpers protocol says: ``get`` with the server URL on stdin answers
``{"ServerURL", "Username", "Secret"}`` on stdout; ``credentials not found in native
keychain`` means none (then the next file is looked in, and at last the pull is anonymous);
``store`` (that JSON on stdin) and ``erase`` (the URL) serve ``hpccont registry login`` and
``logout``.  A helper that fails, hangs (HPCCONT_CREDENTIAL_HELPER_TIMEOUT, 30 s) or answers
something else is an error of one line.

The challenge (RFC 7235) selects the flow: ``Basic realm=...`` sends the credentials to the
registry; ``Bearer realm=URL,service=S,scope=...`` asks the token endpoint at URL (with the
credentials, or anonymously) for a token carrying the scopes, as Docker Hub, GHCR, Quay and
NGC do.
"""
from __future__ import annotations

import base64
import json
import os
import re

from .errors import RegistryError

ENV_PAIRS = (("HPCCONT_DOCKER_USERNAME", "HPCCONT_DOCKER_PASSWORD"),
             ("APPTAINER_DOCKER_USERNAME", "APPTAINER_DOCKER_PASSWORD"),
             ("SINGULARITY_DOCKER_USERNAME", "SINGULARITY_DOCKER_PASSWORD"))
HUB_SERVER = "https://index.docker.io/v1/"     # Docker Hub's name in config.json and helpers
HELPER_PREFIX = "docker-credential-"
NOT_FOUND = "credentials not found in native keychain"   # the protocol's "no credentials"
HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io",
            "registry-1.docker.io", "https://registry-1.docker.io")

def hpccont_auth_file(environ=os.environ) -> str:
    return environ.get("HPCCONT_AUTH_FILE") or os.path.join(
        os.path.expanduser("~"), ".hpccont", "docker-config.json")


def docker_config_file(environ=os.environ) -> str:
    base = environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return os.path.join(base, "config.json")


def _keys_for(host: str) -> list[str]:
    if host in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        return list(HUB_KEYS)
    return [host, f"https://{host}", f"http://{host}", f"https://{host}/v1/",
            f"https://{host}/v2/"]


def read_auths(path: str) -> dict[str, dict]:
    auths = _load_doc(path).get("auths")
    return auths if isinstance(auths, dict) else {}


def _decode(entry: dict, path: str) -> tuple[str, str] | None:
    if not isinstance(entry, dict):
        return None
    if entry.get("auth"):
        try:
            user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise RegistryError(f"{path}: bad 'auth' value (expected base64 of user:password)") \
                from None
        if sep:
            return user, password
    if entry.get("username") and entry.get("password") is not None:
        return str(entry["username"]), str(entry["password"])
    return None


def credentials_for(host: str, environ=os.environ) -> tuple[str, str] | None:
    for user_var, pass_var in ENV_PAIRS:
        if environ.get(user_var) is not None and environ.get(pass_var) is not None:
            return environ[user_var], environ[pass_var]
    for path in (hpccont_auth_file(environ), docker_config_file(environ)):
        doc = _load_doc(path)
        helper = helper_for(doc, host)
        if helper:
            # Docker reads no auths entry of a registry a helper serves
            creds = helper_get(helper, host, path, environ)
            if creds:
                return creds
            continue
        auths = doc.get("auths") if isinstance(doc.get("auths"), dict) else {}
        for key in _keys_for(host):
            if key in auths:
                creds = _decode(auths[key], path)
                if creds:
                    return creds
    return None


def basic_header(creds: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()


# --- challenges ----------------------------------------------------------------------------

_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``'Bearer realm="x",service="y"'`` -> ('bearer', {'realm': 'x', 'service': 'y'})."""
    header = (header or "").strip()
    scheme, _, rest = header.partition(" ")
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if not m or m.end() == pos:
            break
        value = m.group(2) if m.group(2) is not None else m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
        pos = m.end()
    return scheme.lower(), params


# --- credential helpers (docker-credential-helpers' protocol) ------------------------------

def server_url(host: str) -> str:
    """The name Docker gives a registry in config.json and to helpers."""
    return HUB_SERVER if host in ("docker.io", "registry-1.docker.io", "index.docker.io") \
        else host


def helper_for(doc: dict, host: str) -> str | None:
    """The helper serving ``host`` in a config.json document: ``credHelpers[host]`` (an empty
    name there means the ``auths`` entries), else ``credsStore``."""
    helpers = doc.get("credHelpers")
    if isinstance(helpers, dict):
        for key in _keys_for(host):
            if key in helpers:
                name = helpers[key]
                return name if isinstance(name, str) and name else None
    store = doc.get("credsStore")
    return store if isinstance(store, str) and store else None


def helper_get(name: str, host: str, source: str, environ=os.environ) -> tuple[str, str] | None:
    """(username, secret) the helper has for ``host``, or None when it has none."""
    prog = HELPER_PREFIX + name
    out = run_helper(name, "get", server_url(host), source, environ)
    if out is None:
        return None
    try:
        doc = json.loads(out)
        user, secret = doc.get("Username", ""), doc.get("Secret", "")
        if not isinstance(user, str) or not isinstance(secret, str):
            raise ValueError
    except (ValueError, AttributeError, RecursionError):
        raise RegistryError(f"credential helper {prog} get: its answer is not the protocol's "
                            "JSON (ServerURL, Username, Secret)") from None
    if user == "<token>":
        raise RegistryError(f"credential helper {prog} gives an identity token for {host}; "
                            "only a username and password are supported")
    return (user, secret) if secret else None


def helper_store(name: str, host: str, creds: tuple[str, str], source: str,
                 environ=os.environ) -> None:
    payload = json.dumps({"ServerURL": server_url(host), "Username": creds[0],
                          "Secret": creds[1]})
    run_helper(name, "store", payload, source, environ, missing_ok=False)


def helper_erase(name: str, host: str, source: str, environ=os.environ) -> bool:
    """False when the helper had nothing for ``host``."""
    return run_helper(name, "erase", server_url(host), source, environ) is not None


def helper_timeout(environ=os.environ) -> float:
    try:
        value = float(environ.get("HPCCONT_CREDENTIAL_HELPER_TIMEOUT", "") or 30)
    except ValueError:
        return 30.0
    return value if value > 0 else 30.0


_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def run_helper(name: str, action: str, stdin: str, source: str, environ=os.environ,
               missing_ok: bool = True) -> str | None:
    """The helper's stdout for ``action``; None for "credentials not found" (if
    ``missing_ok``).  The helper runs as the caller, with the caller's environment, in a
    session of its own: a hung one is killed with whatever it started."""
    prog = HELPER_PREFIX + name
    if not _HELPER_NAME.fullmatch(name):
        raise RegistryError(f"{source}: credential helper name {name!r} is not a program name")
    path = _which(prog, environ.get("PATH", os.defpath))
    if path is None:
        raise RegistryError(f"credential helper {prog} (named in {source}) not found on PATH")
    import subprocess
    timeout = helper_timeout(environ)
    try:
        p = subprocess.Popen([path, action], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=dict(environ), start_new_session=True)
    except OSError as e:
        raise RegistryError(f"credential helper {prog}: cannot run: {e.strerror}") from None
    try:
        out, err = p.communicate(stdin.encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_session(p)
        raise RegistryError(f"credential helper {prog} {action}: no answer within "
                            f"{timeout:g} s (HPCCONT_CREDENTIAL_HELPER_TIMEOUT)") from None
    except BaseException:
        _kill_session(p)
        raise
    text = out.decode(errors="replace").strip()
    if p.returncode == 0:
        return text
    said = text or err.decode(errors="replace").strip()
    if missing_ok and said == NOT_FOUND:
        return None
    first = said.splitlines()[0][:200] if said else f"exit status {p.returncode}"
    raise RegistryError(f"credential helper {prog} {action} failed: {first}")


def _kill_session(p) -> None:
    import signal
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except OSError:
        pass
    for f in (p.stdin, p.stdout, p.stderr):
        try:
            f.close()
        except OSError:
            pass
    p.wait()


def _which(prog: str, search: str) -> str | None:
    for d in search.split(os.pathsep):
        path = os.path.join(d or ".", prog)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def login_helper(host: str, environ=os.environ) -> tuple[str | None, str]:
    """(helper, the file naming it) that ``registry login`` stores through, as ``docker
    login`` does: the one hpccont's auth file names for ``host``, else Docker's; (None, "")."""
    for path in (hpccont_auth_file(environ), docker_config_file(environ)):
        name = helper_for(_load_doc(path), host)
        if name:
            return name, path
    return None, ""


# --- the auth file 'hpccont registry login' writes -----------------------------------------

def store_login(host: str, creds: tuple[str, str], environ=os.environ) -> str:
    """Store ``creds`` for ``host``; returns where ("in FILE", "by HELPER")."""
    path = hpccont_auth_file(environ)
    helper, source = login_helper(host, environ)
    if helper:
        helper_store(helper, host, creds, source, environ)
    doc = _load_doc(path)
    auths = doc.setdefault("auths", {})
    for k in _keys_for(host):
        auths.pop(k, None)
    # with a helper, an empty entry (as Docker writes) lets 'registry list' show the login
    auths[server_url(host)] = {} if helper else \
        {"auth": base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()}
    _write_doc(path, doc)
    return f"by {HELPER_PREFIX}{helper}" if helper else f"in {path}"


def remove_login(host: str, environ=os.environ) -> bool:
    path = hpccont_auth_file(environ)
    helper, source = login_helper(host, environ)
    erased = helper_erase(helper, host, source, environ) if helper else False
    doc = _load_doc(path)
    auths = doc.get("auths") or {}
    found = [k for k in _keys_for(host) if k in auths]
    for k in found:
        del auths[k]
    if found:
        _write_doc(path, doc)
    return bool(found) or erased


def list_logins(environ=os.environ) -> list[tuple[str, str]]:
    """(registry, username) of every stored login."""
    path = hpccont_auth_file(environ)
    out = []
    for key, entry in sorted(read_auths(path).items()):
        host = "docker.io" if key in HUB_KEYS else key
        creds = _decode(entry, path)
        if creds is None:
            creds = _helper_creds(host, environ)
        out.append((host, creds[0] if creds else "?"))
    return out


def _helper_creds(host: str, environ) -> tuple[str, str] | None:
    helper, source = login_helper(host, environ)
    if not helper:
        return None
    try:
        return helper_get(helper, host, source, environ)
    except RegistryError:
        return None


def _load_doc(path: str) -> dict:
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise RegistryError(f"{path}: cannot read registry credentials: {e}") from None
    return doc if isinstance(doc, dict) else {}


def _write_doc(path: str, doc: dict) -> None:
    d = os.path.dirname(path)
    os.makedirs(d, mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
            f.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
