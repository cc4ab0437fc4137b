"""The image cache: content-addressed blobs and converted SIFs, safe for concurrent pulls.

Root: ``$HPCCONT_CACHEDIR``, else ``$APPTAINER_CACHEDIR``, else ``~/.cache/hpccont``::

    blob/sha256/HEX     manifests, image configs, layers and oras SIFs, verified by digest
    sif/KEY.sif         an image manifest converted to SIF (KEY: manifest digest, name,
    sif/KEY.json          hpccont version and squashfs settings); what was pulled, and when
    ref/HASH.json       the digest a tag last resolved to (for pulls without network)
    tmp/HEX.partial     downloads in progress (resumed with HTTP Range)
    lock/NAME.lock      flock(2) locks: one downloader per blob, one converter per SIF

Every file appears under its final name by rename(2) only once complete and verified, so a
reader never sees half a blob; a second process wanting the same blob waits on its lock and
then finds it, so each blob is downloaded once however many processes (or nodes sharing the
directory) pull at the same time.  A read-only site cache (``registry.site_cache``, same
layout, filled by an admin) is looked in first and never written.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator

from .errors import RegistryError

SUBDIRS = ("blob/sha256", "sif", "ref", "tmp", "lock")


def default_root(environ=os.environ) -> str:
    for var in ("HPCCONT_CACHEDIR", "APPTAINER_CACHEDIR", "SINGULARITY_CACHEDIR"):
        if environ.get(var):
            return os.path.abspath(environ[var])
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hpccont")


def _hex(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or not all(c in "0123456789abcdef" for c in hexpart):
        raise RegistryError(f"unsupported digest {digest!r} (expected sha256:64 hex digits)")
    return hexpart


class Cache:
    def __init__(self, root: str | None = None, site: str | None = None,
                 environ=os.environ):
        self.root = root or default_root(environ)
        self.site = site or None
        self._ready = False
        self.private = root is None and not any(
            environ.get(v) for v in ("HPCCONT_CACHEDIR", "APPTAINER_CACHEDIR",
                                     "SINGULARITY_CACHEDIR"))

    # --- layout -----------------------------------------------------------------------------
    def ensure(self) -> None:
        if self._ready:
            return
        try:
            if self.private:
                os.makedirs(self.root, mode=0o700, exist_ok=True)
            else:
                os.makedirs(self.root, exist_ok=True)
            for d in SUBDIRS:
                os.makedirs(os.path.join(self.root, d), exist_ok=True)
        except OSError as e:
            raise RegistryError(f"cache {self.root}: cannot create: {e.strerror} "
                                "(set HPCCONT_CACHEDIR to a writable directory)") from None
        self._ready = True

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def blob_path(self, digest: str) -> str:
        return self.path("blob", "sha256", _hex(digest))

    def partial_path(self, digest: str) -> str:
        return self.path("tmp", _hex(digest) + ".partial")

    def _roots(self) -> list[str]:
        return ([self.site] if self.site else []) + [self.root]

    def find_blob(self, digest: str, size: int | None = None) -> str | None:
        hexpart = _hex(digest)
        for root in self._roots():
            p = os.path.join(root, "blob", "sha256", hexpart)
            try:
                st = os.stat(p)
            except OSError:
                continue
            if size is None or st.st_size == size:
                if root == self.root:
                    touch(p)
                return p
        return None

    def read_blob(self, digest: str) -> bytes | None:
        p = self.find_blob(digest)
        if p is None:
            return None
        try:
            with open(p, "rb") as f:
                return f.read()
        except OSError:
            return None

    def put_blob(self, digest: str, data: bytes) -> str:
        """Store small verified content (a manifest, a config) under its digest."""
        import hashlib
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise RegistryError(f"digest mismatch storing {digest}")
        self.ensure()
        final = self.blob_path(digest)
        if os.path.exists(final):
            return final
        tmp = self.path("tmp", f"{_hex(digest)}.{os.getpid()}.small")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, final)
        except OSError as e:
            _unlink(tmp)
            raise RegistryError(f"cache {self.root}: cannot write: {e.strerror}") from None
        return final

    def commit_blob(self, partial: str, digest: str) -> str:
        final = self.blob_path(digest)
        os.chmod(partial, 0o644 if not self.private else 0o600)
        os.replace(partial, final)
        return final

    # --- SIFs -------------------------------------------------------------------------------
    def sif_path(self, key: str) -> str:
        return self.path("sif", key + ".sif")

    def find_sif(self, key: str) -> str | None:
        for root in self._roots():
            p = os.path.join(root, "sif", key + ".sif")
            if os.path.isfile(p):
                if root == self.root:
                    touch(p)
                return p
        return None

    def write_meta(self, key: str, meta: dict) -> None:
        p = self.path("sif", key + ".json")
        tmp = f"{p}.{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                json.dump(meta, f, indent=1, sort_keys=True)
            os.replace(tmp, p)
        except OSError:
            _unlink(tmp)

    # --- tag -> digest, for pulls without the network ---------------------------------------
    def _ref_file(self, root: str, ref: str) -> str:
        import hashlib
        return os.path.join(root, "ref", hashlib.sha256(ref.encode()).hexdigest()[:32] + ".json")

    def record_ref(self, ref: str, digest: str) -> None:
        self._write_ref(ref, {"ref": ref, "digest": digest, "time": int(time.time())})

    def lookup_ref(self, ref: str) -> str | None:
        doc = self._read_ref(ref)
        digest = str(doc.get("digest", "")) if doc else ""
        return digest if digest.startswith("sha256:") else None

    # The SIF a reference gave last time: a warm pull starts copying it out while the registry
    # confirms the tag (fetch_out.pull), and keeps the copy only if the answer is that SIF.
    def remember_sif(self, ref: str, path: str) -> None:
        name = os.path.basename(path)
        doc = self._read_ref("sif " + ref)
        if doc is None or doc.get("sif") != name:   # every task of a job pulls: write once
            self._write_ref("sif " + ref, {"ref": "sif " + ref, "sif": name})

    def remembered_sif(self, ref: str) -> str | None:
        doc = self._read_ref("sif " + ref)
        name = str(doc.get("sif", "")) if doc else ""
        key = name[:-4] if name.endswith(".sif") else ""
        if not key or not all(c in "0123456789abcdef" for c in key):
            return None
        for root in self._roots():
            p = os.path.join(root, "sif", name)
            if os.path.isfile(p):
                return p
        return None

    def _write_ref(self, ref: str, doc: dict) -> None:
        try:
            self.ensure()
        except RegistryError:
            return          # a read-only home with a site cache: only offline pulls lose
        p = self._ref_file(self.root, ref)
        tmp = f"{p}.{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                json.dump(doc, f)
            os.replace(tmp, p)
        except OSError:
            _unlink(tmp)

    def _read_ref(self, ref: str) -> dict | None:
        for root in reversed(self._roots()):    # the user's own record is the newer one
            try:
                with open(self._ref_file(root, ref)) as f:
                    doc = json.load(f)
                if isinstance(doc, dict) and doc.get("ref") == ref:
                    return doc
            except (OSError, ValueError, RecursionError):
                continue
        return None

    # --- locks ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        self.ensure()
        p = self.path("lock", name + ".lock")
        try:
            fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise RegistryError(f"cache {self.root}: cannot lock {name}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- list and clean ---------------------------------------------------------------------
    def entries(self) -> list[dict]:
        """Every cached SIF and blob: kind, path, size, last use, and what it is."""
        out = []
        sif_dir = self.path("sif")
        for name in sorted(_listdir(sif_dir)):
            if not name.endswith(".sif") or name.startswith("."):
                continue
            p = os.path.join(sif_dir, name)
            meta = {}
            try:
                with open(p[:-4] + ".json") as f:
                    meta = json.load(f)
            except (OSError, ValueError):
                pass
            out.append(_entry("sif", p, meta.get("ref", "?"), meta.get("digest", "")))
        blob_dir = self.path("blob", "sha256")
        for name in sorted(_listdir(blob_dir)):
            out.append(_entry("blob", os.path.join(blob_dir, name), "", "sha256:" + name))
        return [e for e in out if e is not None]

    def clean(self, days: float | None = None, kinds=("sif", "blob")) -> list[dict]:
        """Remove entries unused for ``days`` (all when None), under their locks; and
        leftovers of interrupted work.  Returns what was removed."""
        if not os.path.isdir(self.root):
            return []
        cutoff = time.time() - days * 86400 if days is not None else None
        removed = []
        for e in self.entries():
            if e["kind"] not in kinds or (cutoff is not None and e["used"] > cutoff):
                continue
            name = ("sif-" + os.path.basename(e["path"])[:-4]) if e["kind"] == "sif" \
                else os.path.basename(e["path"])
            with self.lock(name):
                _unlink(e["path"])
                if e["kind"] == "sif":
                    _unlink(e["path"][:-4] + ".json")
            removed.append(e)
        # partial files of interrupted downloads and conversions
        for d in ("tmp", "sif"):
            for name in _listdir(self.path(d)):
                p = self.path(d, name)
                stale = cutoff is None or _mtime(p) < cutoff
                if stale and (d == "tmp" or name.startswith(".")):
                    if d == "tmp" and name.endswith(".partial"):
                        with self.lock(name[:-len(".partial")]):
                            _unlink(p)
                    elif os.path.isdir(p):
                        import shutil
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        _unlink(p)
        if cutoff is None:
            for name in _listdir(self.path("ref")):
                _unlink(self.path("ref", name))
        return removed


def _entry(kind: str, path: str, ref: str, digest: str) -> dict | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"kind": kind, "path": path, "size": st.st_size, "used": st.st_mtime, "ref": ref,
            "digest": digest}


def touch(path: str) -> None:
    """Record a use (``cache clean --days`` goes by it)."""
    try:
        os.utime(path)
    except OSError:
        pass


def _listdir(d: str) -> list[str]:
    try:
        return os.listdir(d)
    except OSError:
        return []


def _mtime(p: str) -> float:
    try:
        return os.lstat(p).st_mtime
    except OSError:
        return 0.0


def _unlink(p: str) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass
