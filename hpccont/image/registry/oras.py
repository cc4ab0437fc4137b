"""SIF files as OCI artifacts (``oras://``), the way Apptainer stores them.

A pushed image is an OCI image manifest whose config is the empty JSON object ``{}`` with
media type ``application/vnd.sylabs.sif.config.v1+json`` and whose one layer is the SIF file,
byte for byte, with media type ``application/vnd.sylabs.sif.layer.v1.sif`` and the file name
in ``org.opencontainers.image.title``.  Apptainer's ``push``/``pull oras://`` read and write
exactly this, so images move between hpccont and Apptainer through any OCI registry.
"""
import hashlib
import json
import os
from typing import Optional

from .cache import Cache
from .errors import RegistryError
from .reference import Reference

SIF_CONFIG = "application/vnd.sylabs.sif.config.v1+json"
SIF_LAYER = "application/vnd.sylabs.sif.layer.v1.sif"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY_CONFIG = b"{}"
TITLE = "org.opencontainers.image.title"
SIF_MAGIC = b"SIF_MAGIC"


def is_sif(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(48)
    except OSError:
        return False
    return head[32:32 + len(SIF_MAGIC)] == SIF_MAGIC


def manifest_for(sif_digest: str, size: int, title: str) -> bytes:
    cfg_digest = "sha256:" + hashlib.sha256(EMPTY_CONFIG).hexdigest()
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"mediaType": SIF_CONFIG, "digest": cfg_digest, "size": len(EMPTY_CONFIG)},
           "layers": [{"mediaType": SIF_LAYER, "digest": sif_digest, "size": size,
                       "annotations": {TITLE: title}}]}
    return json.dumps(doc, separators=(",", ":")).encode()


def push(path: str, ref: Reference, *, nohttps: bool = False, quiet: bool = True,
         environ=os.environ) -> str:
    """Upload SIF ``path`` to ``ref``; returns the manifest digest."""
    from .pull import check_allowed, make_client, registry_config
    if ref.scheme != "oras":
        raise RegistryError(f"{ref.uri()}: push needs an oras:// reference")
    if not os.path.isfile(path):
        raise RegistryError(f"{path}: no such file")
    if not is_sif(path):
        raise RegistryError(f"{path}: not a SIF file (only SIF images can be pushed)")
    if ref.digest:
        raise RegistryError(f"{ref.uri()}: push to a tag, not a digest")
    check_allowed(ref, registry_config(environ))
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    digest = "sha256:" + h.hexdigest()
    label = ref.uri()
    client = make_client(ref, nohttps, environ)
    try:
        cfg_digest = "sha256:" + hashlib.sha256(EMPTY_CONFIG).hexdigest()
        scope = f"repository:{ref.repository}:pull,push"
        if not client.blob_exists(ref.repository, cfg_digest, scope=scope):
            client.upload_blob(ref.repository, cfg_digest, EMPTY_CONFIG, len(EMPTY_CONFIG),
                               label=label)
        if not client.blob_exists(ref.repository, digest, scope=scope):
            with open(path, "rb") as f:
                client.upload_blob(ref.repository, digest, f, size, label=label)
        body = manifest_for(digest, size, os.path.basename(path))
        client.put_manifest(ref.repository, ref.tag or "latest", body, OCI_MANIFEST, label=label)
    finally:
        client.close()
    return "sha256:" + hashlib.sha256(body).hexdigest()


def pull_to_cache(ref: Reference, *, nohttps: bool = False, quiet: bool = True,
                  cache: Optional[Cache] = None, offline: bool = False,
                  environ=os.environ) -> str:
    """The cached path of the SIF that ``oras://ref`` names (a verified blob)."""
    from . import download
    from .pull import _LazyClient, _manifest, open_cache
    cache = cache or open_cache(environ=environ)
    label = ref.uri()
    lazy = _LazyClient(ref, nohttps, offline, environ)
    target = ref.target
    if offline and not target.startswith("sha256:"):
        target = cache.lookup_ref(label) or target
    doc, media, digest = _manifest(lazy, cache, ref, target, label)
    if not ref.digest and not offline:
        cache.record_ref(label, digest)
    layers = [m for m in doc.get("layers") or [] if isinstance(m, dict)
              and m.get("mediaType") == SIF_LAYER]
    if not layers:
        have = (doc.get("config") or {}).get("mediaType") or media
        raise RegistryError(f"{label}: not a SIF artifact (no layer of type {SIF_LAYER}; "
                            f"this is {have}; for container images use docker://)")
    layer = layers[0]
    progress = download.Progress(int(layer.get("size") or 0), f"pulling {ref}", quiet=quiet)
    try:
        found = cache.find_blob(str(layer.get("digest", "")), layer.get("size"))
        if found:
            return found
        path = download.fetch_blob(lazy.get(), cache, ref.repository, str(layer["digest"]),
                                   layer.get("size"), label, progress)
    finally:
        progress.finish()
        lazy.close()
    if not is_sif(path):
        raise RegistryError(f"{label}: the artifact's layer is not a SIF file")
    return path
