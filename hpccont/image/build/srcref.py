"""What the SRC argument of ``hpccont build OUT SRC`` names.

SRC is a definition file, an image to convert (sandbox directory, SIF, squashfs), an offline
image reference (``docker-archive:FILE``, ``oci-archive:FILE[:TAG]``, ``oci:DIR[:TAG]``,
``localimage:PATH``), a registry image (``docker://``, ``oras://``: the docker and oras
agents), or another network URI (``library://``, ``shub://``, ``http(s)://``), which hpccont
build does not fetch and says so.
"""
import os
from dataclasses import dataclass
from typing import Optional

from ...errors import BuildError, ImageError
from ..sif import is_sif
from ..source import SQUASHFS_MAGIC

# prefix -> bootstrap agent that builds from it without a definition file
AGENT_PREFIXES = {
    "docker-archive:": "docker-archive",
    "oci-archive:": "oci-archive",
    "oci:": "oci",
    "localimage:": "localimage",
    "docker://": "docker",
    "oras://": "oras",
}

# Registries need the network; name what works offline instead.
REGISTRY_PREFIXES = {
    "library://": "pull the SIF on a machine with network access, copy it here and build from "
                  "it (localimage)",
    "shub://": "copy the image here and build from it (localimage)",
    "http://": "download the file elsewhere, copy it here and build from the local file",
    "https://": "download the file elsewhere, copy it here and build from the local file",
}


@dataclass(frozen=True)
class BuildSource:
    kind: str                     # "image" | "definition" | "agent"
    path: str
    agent: Optional[str] = None   # for kind == "agent"


def registry_error(ref: str) -> BuildError:
    for prefix, hint in REGISTRY_PREFIXES.items():
        if ref.startswith(prefix):
            return BuildError(f"{ref}: needs network registry access, which hpccont build does "
                              f"not use; offline alternatives: docker-archive:FILE.tar, "
                              f"oci-archive:FILE.tar, oci:DIR, localimage:PATH ({hint})")
    raise AssertionError(ref)


def is_registry_ref(ref: str) -> bool:
    return any(ref.startswith(p) for p in REGISTRY_PREFIXES)


def sniff_file(path: str) -> str:
    """'sif', 'squashfs' or 'text' from a file's first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise ImageError(f"{path}: cannot read: {e.strerror}") from None
    if is_sif(head):
        return "sif"
    if head[:4] == SQUASHFS_MAGIC:
        return "squashfs"
    return "text"


def classify(ref: str) -> BuildSource:
    if is_registry_ref(ref):
        raise registry_error(ref)
    for prefix, agent in AGENT_PREFIXES.items():
        if ref.startswith(prefix):
            rest = ref[len(prefix):]
            if not rest:
                raise BuildError(f"{ref}: missing path after {prefix!r}")
            return BuildSource("agent", rest, agent)
    if os.path.isdir(ref):
        return BuildSource("image", ref)
    if not os.path.exists(ref):
        raise BuildError(f"{ref}: no such file or directory (expected a definition file, an "
                         f"image, or docker-archive:/oci-archive:/oci: reference)")
    kind = sniff_file(ref)
    return BuildSource("definition" if kind == "text" else "image", ref)
