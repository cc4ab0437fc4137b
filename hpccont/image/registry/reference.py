"""Image references with Docker's naming rules (distribution/reference's normalisation).

``[HOST[:PORT]/]PATH[:TAG][@DIGEST]``: the first component is a registry host when it contains
a ``.`` or a ``:`` or is ``localhost``; otherwise the image is on Docker Hub (``docker.io``),
where a one-component name lives under ``library/``.  The tag defaults to ``latest`` unless a
digest is given.  Docker Hub's API is served by ``registry-1.docker.io``.
"""
from __future__ import annotations

import re

from ...record import record
from . import SCHEMES               # one list, in the package (the exec path checks it)
from .errors import RegistryError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
_HOST = re.compile(r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
                   r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])"
                   r"(?::[0-9]+)?$")


@record
class Reference:
    registry: str                # host[:port] as written (docker.io for Docker Hub)
    repository: str              # path inside the registry: library/alpine
    tag: str | None = None
    digest: str | None = None
    scheme: str = "docker"

    def __hash__(self) -> int:    # a value, usable as a key
        return hash((self.registry, self.repository, self.tag, self.digest, self.scheme))

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def target(self) -> str:
        """What to ask the manifests endpoint for: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def pinned(self, digest: str) -> "Reference":
        return Reference(self.registry, self.repository, None, digest, self.scheme)

    def __str__(self) -> str:
        s = self.name
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s

    def uri(self) -> str:
        return f"{self.scheme}://{self}"

    def default_filename(self) -> str:
        """Apptainer's default pull name: ``NAME_TAG.sif`` (last path component)."""
        base = self.repository.rsplit("/", 1)[-1]
        if self.tag:
            return f"{base}_{self.tag}.sif"
        if self.digest:
            return f"{base}_{self.digest.partition(':')[2][:12]}.sif"
        return f"{base}_latest.sif"


def strip_scheme(text: str) -> tuple:
    for s in SCHEMES:
        if text.startswith(s):
            return s[:-3], text[len(s):]
    return "docker", text


def parse(text: str, *, scheme: str | None = None, registry: str = "",
          namespace: str = "") -> Reference:
    """Parse ``docker://...``, ``oras://...`` or a bare reference.

    ``registry`` and ``namespace`` are the ``Registry:`` and ``Namespace:`` headers of a
    definition file: a name without a host goes to ``registry``, and ``namespace`` replaces
    Docker Hub's ``library`` for one-component names.
    """
    found, rest = strip_scheme(text.strip())
    scheme = scheme or found
    original = text
    if not rest:
        raise RegistryError(f"{original!r}: empty image reference")
    if rest.startswith("/") or "//" in rest or rest.endswith("/"):
        raise RegistryError(f"{original}: not an image reference (expected "
                            "[HOST[:PORT]/]NAME[:TAG][@DIGEST])")
    digest = None
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        if not _DIGEST.match(digest):
            raise RegistryError(f"{original}: bad digest {digest!r} (expected sha256:HEX)")
        if digest.startswith("sha256:") and not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise RegistryError(f"{original}: bad sha256 digest {digest!r}")
    tag = None
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, _, tag = rest.rpartition(":")
        if not _TAG.match(tag):
            raise RegistryError(f"{original}: bad tag {tag!r}")
    parts = rest.split("/")
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost"
                           or first != first.lower()):
        host, path = first, parts[1:]
    else:
        host, path = "", parts
    if host and not _HOST.match(host):
        raise RegistryError(f"{original}: bad registry host {host!r}")
    if not host:
        host = registry.strip().rstrip("/") if registry else DOCKER_HUB
        for s in ("https://", "http://", "docker://"):
            if host.startswith(s):
                host = host[len(s):]
    if host.lower() in HUB_ALIASES:
        host = DOCKER_HUB
    if namespace and len(path) == 1:
        path = namespace.strip("/").split("/") + path
    elif host == DOCKER_HUB and len(path) == 1:
        path = ["library"] + path
    for comp in path:
        if not _COMPONENT.match(comp):
            raise RegistryError(f"{original}: bad repository name component {comp!r} "
                                "(lowercase letters, digits, and . _ - separators)")
    repository = "/".join(path)
    if len(host) + 1 + len(repository) > 255:
        raise RegistryError(f"{original}: repository name longer than 255 characters")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(host, repository, tag, digest, scheme)
