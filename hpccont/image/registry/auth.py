"""Registry credentials and the WWW-Authenticate challenge.

Where a username/password for a registry host comes from, first match wins:

1. ``HPCCONT_DOCKER_USERNAME``/``HPCCONT_DOCKER_PASSWORD`` (Apptainer's
   ``APPTAINER_DOCKER_USERNAME``/``_PASSWORD`` and ``SINGULARITY_DOCKER_*`` too): any registry;
2. ``hpccont registry login`` entries: ``$HPCCONT_AUTH_FILE`` or ``~/.hpccont/docker-config.json``
   (Docker's config.json format, mode 0600);
3. Docker's ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json`` (``auths``: base64
   ``user:password`` in ``auth``, or ``username``/``password``; Docker Hub's key is
   ``https://index.docker.io/v1/``).  Credential helpers (``credsStore``) are not run.

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
        auths = read_auths(path)
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


# --- the auth file 'hpccont registry login' writes -----------------------------------------

def store_login(host: str, creds: tuple[str, str], environ=os.environ) -> str:
    path = hpccont_auth_file(environ)
    doc = _load_doc(path)
    doc.setdefault("auths", {})
    key = "https://index.docker.io/v1/" if host == "docker.io" else host
    doc["auths"][key] = {"auth": base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()}
    _write_doc(path, doc)
    return path


def remove_login(host: str, environ=os.environ) -> bool:
    path = hpccont_auth_file(environ)
    doc = _load_doc(path)
    auths = doc.get("auths") or {}
    found = [k for k in _keys_for(host) if k in auths]
    for k in found:
        del auths[k]
    if found:
        _write_doc(path, doc)
    return bool(found)


def list_logins(environ=os.environ) -> list[tuple[str, str]]:
    """(registry, username) of every stored login."""
    path = hpccont_auth_file(environ)
    out = []
    for key, entry in sorted(read_auths(path).items()):
        creds = _decode(entry, path)
        host = "docker.io" if key in HUB_KEYS else key
        out.append((host, creds[0] if creds else "?"))
    return out


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
