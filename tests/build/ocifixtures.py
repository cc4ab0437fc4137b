"""OCI / Docker archives assembled by the tests themselves, following the OCI image spec
(image-layout.md, manifest.md, config.md, layer.md) and docker save's manifest.json."""
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Dict, List, Tuple

Entry = Tuple[str, str, object]   # (path, kind: file|dir|symlink|whiteout|opaque, data)


def layer_tar(entries: List[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path, kind, data in entries:
            info = tarfile.TarInfo(path)
            info.mtime = 1_600_000_000
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, data
                tf.addfile(info)
            elif kind in ("whiteout", "opaque"):
                info.size = 0
                tf.addfile(info, io.BytesIO(b""))
            else:
                raw = data.encode() if isinstance(data, str) else data
                info.size, info.mode = len(raw), 0o755 if path.startswith("bin/") else 0o644
                tf.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_config(env=None, entrypoint=None, cmd=None, workdir="", labels=None,
                 diff_ids=()) -> bytes:
    cfg = {"Env": env or [], "Entrypoint": entrypoint, "Cmd": cmd, "WorkingDir": workdir,
           "Labels": labels or {}}
    return json.dumps({"architecture": "amd64", "os": "linux", "config": cfg,
                       "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]}
                       }).encode()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 1_600_000_000
    tf.addfile(info, io.BytesIO(data))


def docker_archive(out: Path, layers: List[bytes], config: bytes) -> Path:
    """The layout 'docker save' writes: <id>/layer.tar, <config>.json, manifest.json."""
    with tarfile.open(out, "w") as tf:
        names = []
        for layer in layers:
            name = f"{sha(layer)}/layer.tar"
            _add(tf, name, layer)
            names.append(name)
        cfg_name = f"{sha(config)}.json"
        _add(tf, cfg_name, config)
        _add(tf, "manifest.json", json.dumps([{"Config": cfg_name, "RepoTags": ["test:latest"],
                                               "Layers": names}]).encode())
    return out


def oci_blobs(layers: List[bytes], config: bytes, tag: str = "latest") -> Dict[str, bytes]:
    """name -> content of an OCI image layout; layers gzip-compressed as registries store them."""
    files: Dict[str, bytes] = {}
    descs = []
    for layer in layers:
        gz = gzip.compress(layer, mtime=0)
        files[f"blobs/sha256/{sha(gz)}"] = gz
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                      "digest": f"sha256:{sha(gz)}", "size": len(gz)})
    files[f"blobs/sha256/{sha(config)}"] = config
    manifest = json.dumps({"schemaVersion": 2,
                           "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": f"sha256:{sha(config)}", "size": len(config)},
                           "layers": descs}).encode()
    files[f"blobs/sha256/{sha(manifest)}"] = manifest
    files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json",
         "digest": f"sha256:{sha(manifest)}", "size": len(manifest),
         "annotations": {"org.opencontainers.image.ref.name": tag}}]}).encode()
    files["oci-layout"] = b'{"imageLayoutVersion": "1.0.0"}'
    return files


def oci_archive(out: Path, layers: List[bytes], config: bytes) -> Path:
    with tarfile.open(out, "w") as tf:
        for name, data in sorted(oci_blobs(layers, config).items()):
            _add(tf, name, data)
    return out


def oci_dir(out: Path, layers: List[bytes], config: bytes) -> Path:
    for name, data in oci_blobs(layers, config).items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    return out


def busybox_layers(busybox: Path) -> List[bytes]:
    """Three layers: a busybox base, a layer adding files, a layer deleting with whiteouts."""
    base = layer_tar([("bin", "dir", None), ("bin/busybox", "file", busybox.read_bytes()),
                      ("bin/sh", "symlink", "busybox"), ("bin/cat", "symlink", "busybox"),
                      ("bin/echo", "symlink", "busybox"), ("bin/ls", "symlink", "busybox"),
                      ("etc", "dir", None), ("etc/passwd", "file", "root:x:0:0::/root:/bin/sh\n"),
                      ("var", "dir", None), ("var/run", "symlink", "/run"), ("run", "dir", None),
                      ("data", "dir", None), ("data/old1", "file", "1"), ("data/old2", "file", "2"),
                      ("etc/removeme", "file", "x")])
    add = layer_tar([("opt", "dir", None), ("opt/app", "file", "app v1\n"),
                     ("var/run/pidfile", "file", "42"), ("keep", "dir", None),
                     ("keep/file", "file", "k")])
    delete = layer_tar([("etc/.wh.removeme", "whiteout", None),
                        ("data/.wh..wh..opq", "opaque", None), ("data/new", "file", "new"),
                        ("opt/app", "file", "app v2\n")])
    return [base, add, delete]
