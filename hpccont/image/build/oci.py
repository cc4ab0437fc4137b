"""Docker and OCI images stored offline: ``docker save`` archives, OCI archives, OCI layouts.

Reads the manifest and image config, applies the layers in order (layers.py) and turns the
config into what an Apptainer-style image carries: environment, a runscript built from
Entrypoint/Cmd/WorkingDir, and labels.
"""
import gzip
import io
import json
import os
import platform
import shlex
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from typing import IO, Dict, List, Optional, Tuple

from ...errors import BuildError
from .layers import apply_layer

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
REF_NAME = "org.opencontainers.image.ref.name"
GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
          "s390x": "s390x", "riscv64": "riscv64", "i686": "386"}
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass
class ImageConfig:
    env: List[Tuple[str, str]] = field(default_factory=list)
    entrypoint: List[str] = field(default_factory=list)
    cmd: List[str] = field(default_factory=list)
    workdir: str = ""
    labels: Dict[str, str] = field(default_factory=dict)

    def runscript(self) -> str:
        """Docker semantics: arguments replace Cmd, Entrypoint stays (as Apptainer does)."""
        lines = ["#!/bin/sh", "# generated from the OCI image config (Entrypoint, Cmd, WorkingDir)"]
        if self.workdir:
            lines.append(f"cd {shlex.quote(self.workdir)} || exit 1")
        if self.cmd:
            lines += ["if [ $# -eq 0 ]; then", f"    set -- {_words(self.cmd)}", "fi"]
        if self.entrypoint:
            lines.append(f"exec {_words(self.entrypoint)} \"$@\"")
        else:
            lines += ["if [ $# -eq 0 ]; then",
                      "    echo 'image has no Entrypoint or Cmd: give a command' >&2", "    exit 1",
                      "fi", "exec \"$@\""]
        return "\n".join(lines) + "\n"

    def environment(self) -> str:
        lines = ["#!/bin/sh", "# environment from the OCI image config"]
        for key, value in self.env:
            lines.append(f"export {key}={_dq(value)}")
        return "\n".join(lines) + "\n"


def _words(words: List[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)


def _dq(value: str) -> str:
    """Double-quoted for sh, so that $VAR references in Docker ENV values still expand."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`") + '"'


def parse_config(raw: bytes, label: str) -> ImageConfig:
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise BuildError(f"{label}: image config is not JSON: {e}") from None
    cfg = (doc.get("config") or {}) if isinstance(doc, dict) else {}
    if not isinstance(cfg, dict):
        raise BuildError(f"{label}: image config has a bad 'config' object")
    env = []
    for item in cfg.get("Env") or []:
        key, sep, value = str(item).partition("=")
        if sep and key.replace("_", "a").isalnum() and not key[0].isdigit():
            env.append((key, value))
    return ImageConfig(env=env, entrypoint=[str(w) for w in cfg.get("Entrypoint") or []],
                       cmd=[str(w) for w in cfg.get("Cmd") or []],
                       workdir=str(cfg.get("WorkingDir") or ""),
                       labels={str(k): str(v) for k, v in (cfg.get("Labels") or {}).items()})


# --- where blobs come from: a tar archive or a directory --------------------------------------

class _Store:
    def read(self, name: str) -> bytes:
        raise NotImplementedError

    def open(self, name: str) -> IO[bytes]:
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        raise NotImplementedError


class _TarStore(_Store):
    def __init__(self, path: str):
        try:
            self.tar = tarfile.open(path, "r:*")
            self.members = {os.path.normpath(m.name): m for m in self.tar.getmembers()}
        except (OSError, tarfile.TarError, EOFError) as e:
            raise BuildError(f"{path}: not a readable image archive: {e}") from None
        self.path = path

    def exists(self, name: str) -> bool:
        return os.path.normpath(name) in self.members

    def open(self, name: str) -> IO[bytes]:
        m = self.members.get(os.path.normpath(name))
        while m is not None and m.issym():  # docker save links identical layers
            m = self.members.get(os.path.normpath(os.path.join(os.path.dirname(m.name), m.linkname)))
        f = self.tar.extractfile(m) if m is not None else None
        if f is None:
            raise BuildError(f"{self.path}: archive has no {name}")
        return f

    def read(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()


class _DirStore(_Store):
    def __init__(self, path: str):
        if not os.path.isdir(path):
            raise BuildError(f"{path}: not an OCI layout directory")
        self.path = path

    def exists(self, name: str) -> bool:
        return os.path.isfile(os.path.join(self.path, name))

    def open(self, name: str) -> IO[bytes]:
        try:
            return open(os.path.join(self.path, name), "rb")
        except OSError as e:
            raise BuildError(f"{self.path}: cannot read {name}: {e.strerror}") from None

    def read(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()


def _json(store: _Store, name: str, label: str):
    try:
        return json.loads(store.read(name))
    except ValueError as e:
        raise BuildError(f"{label}: {name} is not JSON: {e}") from None


def _blob_name(digest: str, label: str) -> str:
    algo, _, hexpart = str(digest).partition(":")
    if not algo.isalnum() or not hexpart.isalnum():
        raise BuildError(f"{label}: bad digest {digest!r}")
    return f"blobs/{algo}/{hexpart}"


# --- manifests ---------------------------------------------------------------------------------

@dataclass
class ImagePlan:
    config: bytes
    layers: List[str]            # store names, bottom first


def docker_plan(store: _Store, label: str) -> ImagePlan:
    doc = _json(store, "manifest.json", label)
    if not isinstance(doc, list) or not doc or not isinstance(doc[0], dict):
        raise BuildError(f"{label}: manifest.json has no image")
    entry = doc[0]
    if "Config" not in entry or not isinstance(entry.get("Layers"), list):
        raise BuildError(f"{label}: manifest.json entry lacks Config or Layers")
    return ImagePlan(store.read(entry["Config"]), [str(x) for x in entry["Layers"]])


def oci_plan(store: _Store, label: str, tag: Optional[str]) -> ImagePlan:
    if not store.exists("index.json"):
        raise BuildError(f"{label}: no index.json (not an OCI image layout)")
    index = _json(store, "index.json", label)
    desc = _pick(index, label, tag)
    for _ in range(4):   # an index may point to a (platform) index
        if desc.get("mediaType") not in INDEX_TYPES:
            break
        desc = _pick(_json(store, _blob_name(desc.get("digest"), label), label), label, None)
    manifest = _json(store, _blob_name(desc.get("digest"), label), label)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
        raise BuildError(f"{label}: manifest has no config")
    layers = [_blob_name(layer.get("digest"), label) for layer in manifest.get("layers") or []]
    return ImagePlan(store.read(_blob_name(manifest["config"].get("digest"), label)), layers)


def _pick(index, label: str, tag: Optional[str]) -> dict:
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not manifests:
        raise BuildError(f"{label}: index lists no manifests")
    manifests = [m for m in manifests if isinstance(m, dict)]
    if tag is not None:
        named = [m for m in manifests if (m.get("annotations") or {}).get(REF_NAME) == tag]
        if not named:
            raise BuildError(f"{label}: no image tagged {tag!r}")
        return named[0]
    arch = GOARCH.get(platform.machine(), platform.machine())
    for m in manifests:
        p = m.get("platform") or {}
        if p.get("architecture") == arch and p.get("os", "linux") == "linux":
            return m
    return manifests[0]


# --- building ----------------------------------------------------------------------------------

def split_ref(ref: str, is_dir_ok: bool) -> Tuple[str, Optional[str]]:
    """``PATH[:TAG]``; a colon belongs to the path when the whole string exists."""
    if os.path.exists(ref) or ":" not in ref:
        return ref, None
    path, _, tag = ref.rpartition(":")
    return path, tag or None


def unpack(kind: str, ref: str, root: str, log=None) -> ImageConfig:
    """Write the image's layers into ``root``; return its config. kind: docker-archive,
    oci-archive or oci."""
    path, tag = split_ref(ref, kind == "oci")
    if not os.path.exists(path):
        raise BuildError(f"{kind}:{ref}: no such file or directory")
    label = f"{kind}:{path}"
    store: _Store = _DirStore(path) if kind == "oci" else _TarStore(path)
    if kind == "docker-archive" and store.exists("manifest.json"):
        plan = docker_plan(store, label)
    elif kind == "docker-archive" and not store.exists("index.json"):
        raise BuildError(f"{label}: no manifest.json (not a 'docker save' archive)")
    else:
        plan = oci_plan(store, label, tag)
    config = parse_config(plan.config, label)
    for n, name in enumerate(plan.layers, 1):
        if log:
            log(f"layer {n}/{len(plan.layers)}")
        with _decompressed(store.open(name), f"{label}: layer {n}") as layer:
            apply_layer(layer, root, f"{label}: layer {n}")
    return config


class _decompressed:
    """A seekable, uncompressed view of a layer blob (gzip, zstd or plain tar)."""

    def __init__(self, raw: IO[bytes], label: str):
        self.raw, self.label, self.tmp = raw, label, None

    def __enter__(self) -> IO[bytes]:
        head = self.raw.read(4)
        self.raw.seek(0)
        if head[:2] == GZIP_MAGIC:
            return self._spool(gzip.GzipFile(fileobj=self.raw))
        if head == ZSTD_MAGIC:
            return self._zstd()
        return self.raw

    def _spool(self, stream: IO[bytes]) -> IO[bytes]:
        import tempfile
        self.tmp = tempfile.TemporaryFile(dir=os.environ.get("HPCCONT_BUILD_WORK"))
        try:
            shutil.copyfileobj(stream, self.tmp, 1 << 20)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise BuildError(f"{self.label}: corrupt compressed layer: {e}") from None
        self.tmp.seek(0)
        return self.tmp

    def _zstd(self) -> IO[bytes]:
        tool = shutil.which("zstd")
        if tool is None:
            raise BuildError(f"{self.label}: zstd-compressed layer needs the 'zstd' command")
        proc = subprocess.Popen([tool, "-dc"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        data = self.raw.read()
        out, _ = proc.communicate(data)
        if proc.returncode != 0:
            raise BuildError(f"{self.label}: corrupt zstd layer")
        return io.BytesIO(out)

    def __exit__(self, *exc) -> None:
        if self.tmp is not None:
            self.tmp.close()
        self.raw.close()
