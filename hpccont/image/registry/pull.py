"""``docker://`` images into the cache and into SIF files.

1. resolve: the reference's manifest (by tag or digest); an index / manifest list is narrowed
   to one platform (the host's architecture unless ``arch`` says otherwise);
2. fetch: the image config and the layers into the blob cache (download.py), in parallel;
3. convert: the layers, bottom first, through the builder's ``docker`` agent (whiteouts,
   gzip/zstd, the config's Env/Entrypoint/Cmd/Labels) into a SIF, reproducibly: the same
   manifest digest always gives the same SIF bytes, which are cached under a key of that
   digest; a second pull downloads and converts nothing.

``pull_to_cache(ref)`` is the entry point for anything that needs a SIF for a reference (the
``pull`` command, scheduler integrations); it returns the cached SIF's path.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading

from ...errors import PolicyError
from ...record import factory, record
from . import reference
from .cache import Cache
from .errors import RegistryError
from .reference import Reference

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
)
SIF_CONFIG = "application/vnd.sylabs.sif.config.v1+json"
SIF_LAYER = "application/vnd.sylabs.sif.layer.v1.sif"
GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
          "s390x": "s390x", "riscv64": "riscv64", "i686": "386", "i386": "386"}
# bump when the conversion changes what it writes: cached SIFs of older versions are redone
CONVERT_FORMAT = 1


@record
class Platform:
    os: str = "linux"
    arch: str = ""
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(x for x in (self.os, self.arch, self.variant) if x)


def parse_platform(text: str | None) -> Platform:
    """``amd64``, ``arm64/v8``, ``linux/arm64``, ``aarch64`` ...; default: the host's."""
    if not text:
        machine = os.uname().machine       # what platform.machine() says, without its import
        arch = GOARCH.get(machine, machine)
        return Platform("linux", arch, "")
    parts = [p for p in text.strip().lower().split("/") if p]
    os_name = "linux"
    if parts and parts[0] in ("linux", "windows", "darwin", "freebsd"):
        os_name = parts.pop(0)
    if not parts or len(parts) > 2:
        raise RegistryError(f"--arch {text!r}: expected ARCH[/VARIANT] (amd64, arm64, ppc64le...)")
    arch = GOARCH.get(parts[0], parts[0])
    if arch == "aarch64":
        arch = "arm64"
    return Platform(os_name, arch, parts[1] if len(parts) > 1 else "")


@record
class Fetched:
    """An image in the blob cache, ready to be unpacked."""
    ref: Reference                    # as asked for
    pinned: Reference                 # name@manifest-digest
    manifest_digest: str
    config: bytes
    layers: list[str] = factory(list)   # blob paths, bottom first
    platform: str = ""


# --- policy ------------------------------------------------------------------------------------

def registry_config(environ=os.environ) -> dict:
    from ... import config
    return config.load(environ).get("registry") or {}


def in_job(environ=os.environ) -> bool:
    return bool(job_of(environ))


def job_of(environ=os.environ) -> str:
    return environ.get("SLURM_JOB_ID") or environ.get("PBS_JOBID") or ""


def job_pin_key(job: str, ref: Reference, arch: str | None) -> str:
    """The cache's tag record for a tag as one job first resolved it."""
    return f"job {job} {ref} {arch or ''}"


def check_allowed(ref: Reference, cfg: dict) -> None:
    allowed = cfg.get("allowed") or []
    if not allowed:
        return
    import fnmatch
    for pattern in allowed:
        p = str(pattern)
        if fnmatch.fnmatch(ref.registry, p) or fnmatch.fnmatch(ref.name, p) or \
                fnmatch.fnmatch(ref.name, p.rstrip("/") + "/*"):
            return
    raise PolicyError(f"{ref.uri()}: registry {ref.registry} is not allowed by the site "
                      f"(registry.allowed: {', '.join(map(str, allowed))})")


def open_cache(cache_dir: str | None = None, cfg: dict | None = None,
               environ=os.environ) -> Cache:
    cfg = cfg if cfg is not None else registry_config(environ)
    site = cfg.get("site_cache") or None
    return Cache(cache_dir, site=site if site and os.path.isdir(site) else None, environ=environ)


def _nohttps(nohttps: bool, environ) -> bool:
    return nohttps or environ.get("HPCCONT_NOHTTPS", "") not in ("", "0", "false")


def make_client(ref: Reference, nohttps: bool = False, environ=os.environ, creds="auto"):
    from .client import Client
    return Client(ref.registry, api_host=ref.api_host, nohttps=_nohttps(nohttps, environ),
                  creds=creds, environ=environ)


class _LazyClient:
    """A client made on first use: fully cached pinned pulls never touch the network, and a
    warm pull by tag makes its one request through quick.py, without http.client."""

    def __init__(self, ref: Reference, nohttps: bool, offline: bool, environ):
        self.ref, self.nohttps, self.offline, self.environ = ref, nohttps, offline, environ
        self._client = None
        self._creds = "auto"
        self._handover = None
        self._quick_tried = False
        self._lock = threading.Lock()      # download threads may ask for it first, together

    def _check_online(self) -> None:
        if self.offline:
            raise RegistryError(f"{self.ref.uri()}: not in the cache, and pulls from registries "
                                "are not allowed here (site config registry.compute_node_pulls; "
                                "pull it on a login node first)")

    def get(self):
        self._check_online()
        with self._lock:
            if self._client is None:
                client = make_client(self.ref, self.nohttps, self.environ, self._creds)
                if self._handover is not None:
                    from .client import pull_scope
                    handover, self._handover = self._handover, None
                    client.take_over(handover, pull_scope(self.ref.repository))
                self._client = client
            return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        elif self._handover is not None and self._handover.sock is not None:
            self._handover.sock.close()
        self._handover = None

    def get_manifest(self, repo: str, target: str, label: str) -> tuple[bytes, str, str]:
        """(body, media type, digest): the first request by quick.py, the rest by the client."""
        self._check_online()
        if self._client is None and not self._quick_tried:
            self._quick_tried = True
            got = self._quick_manifest(repo, target, label)
            if got is not None:
                return got
        return self.get().get_manifest(repo, target, label=label)

    def _quick_manifest(self, repo: str, target: str, label: str):
        from . import auth, quick
        # read once: the client made after a handover gets them (a credential helper runs once)
        self._creds = auth.credentials_for(self.ref.registry, self.environ)
        headers = {"User-Agent": quick.user_agent(), "Accept": ", ".join(quick.MANIFEST_TYPES)}
        if self._creds:
            headers["Authorization"] = auth.basic_header(self._creds)
        scheme = "http" if _nohttps(self.nohttps, self.environ) else "https"
        from .proxy import for_url
        via = for_url(scheme, self.ref.api_host, self.environ)   # the full client's choice too
        answer, self._handover = quick.manifest(scheme, self.ref.api_host,
                                                f"/v2/{repo}/manifests/{target}", headers,
                                                min(quick.timeout_of(self.environ),
                                                    quick.FIRST_TRY_S), via)
        if answer is None:
            return None
        return quick.check_manifest(answer.body, answer.headers.get("content-type", ""),
                                    answer.headers.get("docker-content-digest", ""), target, label)


# --- resolve -----------------------------------------------------------------------------------

def _manifest(lazy: _LazyClient, cache: Cache, ref: Reference, target: str,
              label: str) -> tuple[dict, str, str]:
    """(document, media type, digest) from the cache when pinned and present, else the
    registry (and then stored in the cache)."""
    raw = cache.read_blob(target) if target.startswith("sha256:") else None
    if raw is not None:
        doc = json.loads(raw)
        return doc, doc.get("mediaType", ""), target
    raw, media, digest = lazy.get_manifest(ref.repository, target, label)
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise RegistryError(f"{label}: manifest is not a JSON object")
    if not doc.get("mediaType") and media:
        doc["mediaType"] = media
    try:
        cache.put_blob(digest, raw)
    except RegistryError:
        pass           # a read-only cache only costs the next pull a request
    return doc, doc.get("mediaType") or media, digest


def _is_index(doc: dict, media: str) -> bool:
    return media in INDEX_TYPES or ("manifests" in doc and "layers" not in doc)


def select_platform(index: dict, want: Platform, label: str) -> dict:
    entries = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
    usable = []
    for m in entries:
        p = m.get("platform") or {}
        if p.get("os") == "unknown" or p.get("architecture") == "unknown":
            continue      # attestation manifests (buildx)
        usable.append(m)
        if p.get("architecture") != want.arch or p.get("os", "linux") != want.os:
            continue
        if want.variant:
            have = p.get("variant") or ("v8" if want.arch == "arm64" else "")
            if have != want.variant:
                continue
        return m
    names = sorted({"/".join(x for x in ((m.get("platform") or {}).get("os"),
                                         (m.get("platform") or {}).get("architecture"),
                                         (m.get("platform") or {}).get("variant")) if x)
                    for m in usable})
    raise RegistryError(f"{label}: no image for platform {want} (the index has: "
                        f"{', '.join(names) or 'none'}; choose one with --arch)")


def resolve(ref: Reference, lazy: _LazyClient, cache: Cache, want: Platform,
            arch_given: bool, offline: bool) -> tuple[dict, str]:
    """The image manifest (document, digest) for ``ref`` on platform ``want``."""
    label = ref.uri()
    target = ref.target
    if not target.startswith("sha256:") and offline:
        target = cache.lookup_ref(str(ref)) or target
    doc, media, digest = _manifest(lazy, cache, ref, target, label)
    if not ref.digest and not lazy.offline:
        cache.record_ref(str(ref), digest)
    for _ in range(3):
        if not _is_index(doc, media):
            break
        entry = select_platform(doc, want, label)
        doc, media, digest = _manifest(lazy, cache, ref, str(entry.get("digest", "")), label)
    else:
        raise RegistryError(f"{label}: index nesting too deep")
    if media == SIF_CONFIG or (doc.get("config") or {}).get("mediaType") == SIF_CONFIG:
        raise RegistryError(f"{label}: this is a SIF image stored as an OCI artifact: pull it "
                            f"with oras://{ref}")
    if media not in MANIFEST_TYPES and not (media == "" and "layers" in doc):
        raise RegistryError(f"{label}: unsupported manifest type {media or '(none)'}")
    return doc, digest


# --- fetch ---------------------------------------------------------------------------------

def fetch_image(ref: Reference, *, arch: str | None = None, nohttps: bool = False,
                quiet: bool = True, cache: Cache | None = None, offline: bool = False,
                threads: int = 4, environ=os.environ) -> Fetched:
    """Resolve ``ref`` and make sure its config and layers are in the cache."""
    from . import download
    cfg = registry_config(environ)
    check_allowed(ref, cfg)
    cache = cache or open_cache(cfg=cfg, environ=environ)
    want = parse_platform(arch)
    lazy = _LazyClient(ref, nohttps, offline, environ)
    manifest, mdigest = resolve(ref, lazy, cache, want, bool(arch), offline)
    label = ref.uri()
    config_desc = manifest.get("config") or {}
    layers = manifest.get("layers") or []
    if not isinstance(config_desc, dict) or not str(config_desc.get("digest", "")):
        raise RegistryError(f"{label}: manifest has no config")
    for layer in layers:
        mt = layer.get("mediaType", "")
        if mt and mt not in LAYER_TYPES:
            raise RegistryError(f"{label}: unsupported layer type {mt}")
    jobs = [(str(config_desc["digest"]), config_desc.get("size"))]
    jobs += [(str(layer.get("digest", "")), layer.get("size")) for layer in layers]
    total = sum(int(s or 0) for _, s in jobs)
    progress = download.Progress(total, f"pulling {ref}", quiet=quiet)

    def one(digest: str, size, abort) -> str:
        found = cache.find_blob(digest, size)
        if found:
            progress.add(size or 0)
            return found
        return download.fetch_blob(lazy.get(), cache, ref.repository, digest, size, label,
                                   progress, abort)
    try:
        # A warm pull finds every blob in the cache: no threads for that.
        cached = [cache.find_blob(d, s) for d, s in jobs]
        paths = cached if all(cached) else download.fetch_all(jobs, one, threads=threads)
    finally:
        progress.finish()
        lazy.close()
    with open(paths[0], "rb") as f:
        config = f.read()
    if arch:
        try:
            have = json.loads(config).get("architecture")
        except (ValueError, AttributeError):
            have = None
        if have and have != want.arch:
            raise RegistryError(f"{label}: image is for {have}, not {want.arch}")
    return Fetched(ref, ref.pinned(mdigest), mdigest, config, paths[1:], str(want))


# --- convert -----------------------------------------------------------------------------------

def sif_key(fetched: Fetched, mksquashfs_args: list[str]) -> str:
    from ... import __version__
    text = json.dumps([CONVERT_FORMAT, fetched.manifest_digest, fetched.pinned.name,
                       __version__, mksquashfs_args])
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def convert(fetched: Fetched, cache: Cache, *, quiet: bool = True,
            tmpdir: str | None = None, environ=os.environ) -> str:
    """The cached SIF of ``fetched`` (converting it once, under the SIF's lock)."""
    import sys
    from ..squashfs import site_compression_args
    args = site_compression_args()
    tty = sys.stderr.isatty()
    key = sif_key(fetched, args)
    found = cache.find_sif(key)
    if found:
        return found
    cache.ensure()
    with cache.lock("sif-" + key):
        found = cache.find_sif(key)
        if found:
            return found
        import time
        from pathlib import Path
        from ..build import builder, deffile
        from ..build.progress import Progress
        out = cache.sif_path(key)
        definition = deffile.from_reference("docker", str(fetched.pinned))
        definition.final.fetched = fetched
        tmp = tmpdir or environ.get("HPCCONT_TMPDIR") or environ.get("TMPDIR") or "/tmp"
        opts = builder.BuildOptions(out=out, source=fetched.pinned.uri(), force=True,
                                    quiet=quiet or not tty, tmpdir=tmp, fakeroot=os.geteuid() != 0,
                                    mksquashfs_args=args, reproducible=True,
                                    source_date_epoch=0, source_date_epoch_given=False)
        builder.run_definition(opts, definition, Path(out), Progress(quiet=quiet or not tty))
        os.chmod(out, 0o755 if not cache.private else 0o700)
        cache.write_meta(key, {"ref": str(fetched.ref), "digest": fetched.manifest_digest,
                               "pinned": str(fetched.pinned), "platform": fetched.platform,
                               "created": int(time.time())})
        return out


def pull_to_cache(ref, *, arch: str | None = None, nohttps: bool = False,
                  quiet: bool = True, cache_dir: str | None = None,
                  tmpdir: str | None = None, job: bool | None = None,
                  offline: bool | None = None, environ=os.environ) -> str:
    """Path of the cached SIF for ``ref`` (``docker://...``, ``oras://...`` or a Reference).

    Downloads and converts only what no cache (the site's, then the user's) has.  ``job``
    (default: inside a Slurm/PBS job) applies the site's ``registry.compute_node_pulls``:
    when false, only cached images are used (a tag resolves to the digest it last had);
    ``offline=True`` asks for that whatever the site says (a job-end hook finding the image).
    Concurrent callers (tasks, nodes sharing the cache directory) wait for one another: each
    blob is downloaded once and each image converted once.  Raises RegistryError/PolicyError.
    """
    if isinstance(ref, str):
        ref = reference.parse(ref)
    cfg = registry_config(environ)
    check_allowed(ref, cfg)
    if offline is None:
        offline = (job if job is not None else in_job(environ)) and \
            not cfg.get("compute_node_pulls", True)
    cache = open_cache(cache_dir, cfg, environ)
    path = _pull_to_cache(ref, cache, arch, nohttps, quiet, tmpdir, offline, environ)
    cache.remember_sif(guess_key(ref, arch), path)
    return path


def guess_key(ref: Reference, arch: str | None) -> str:
    return f"{ref} {arch or ''}"


def cached_guess(uri: str, arch: str | None = None, environ=os.environ) -> str | None:
    """The cached SIF ``uri`` gave last time (no network; None if unknown or gone): what a
    warm pull most likely gets again."""
    try:
        ref = reference.parse(uri)
        return open_cache(environ=environ).remembered_sif(guess_key(ref, arch))
    except (RegistryError, PolicyError, OSError):
        return None


def _pull_to_cache(ref: Reference, cache: Cache, arch, nohttps, quiet, tmpdir, offline,
                   environ) -> str:
    if ref.scheme == "oras":
        from . import oras
        return oras.pull_to_cache(ref, nohttps=nohttps, quiet=quiet, cache=cache,
                                  offline=offline, environ=environ)
    # Within a job, a tag is resolved once: every later task, step and node of the job (sharing
    # the cache) runs the digest the first one got, without asking the registry again (a
    # 1000-task job must not spend 1000 of Docker Hub's manifest requests), and a tag moved
    # while the job runs cannot give its tasks different images.
    job = job_of(environ) if not ref.digest else ""
    pinned = cache.lookup_ref(job_pin_key(job, ref, arch)) if job else None
    fetched = fetch_image(ref.pinned(pinned) if pinned else ref, arch=arch, nohttps=nohttps,
                          quiet=quiet, cache=cache, offline=offline, environ=environ)
    if job and not pinned:
        cache.record_ref(job_pin_key(job, ref, arch), fetched.manifest_digest)
    return convert(fetched, cache, quiet=quiet, tmpdir=tmpdir, environ=environ)


def describe(sif_path: str) -> dict:
    """What a cached SIF (a ``pull_to_cache`` result) was pulled as: ``ref``, ``digest`` (the
    image manifest's), ``pinned`` (NAME@DIGEST), ``platform``, ``created``; {} if unknown."""
    meta = sif_path[:-4] + ".json" if sif_path.endswith(".sif") else ""
    try:
        with open(meta) as f:
            doc = json.load(f)
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}
