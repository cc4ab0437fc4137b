"""A per-user cache of computed facts, for work too slow to redo on every task of every job.

Each entry is a JSON file in ``$XDG_CACHE_HOME/hpccont`` (``~/.cache/hpccont``) holding a
*stamp* (what the fact was computed from: sizes, mtimes, settings) and the value.  A stale
stamp recomputes.  An entry is trusted only if it belongs to the user and nobody else can
write it: another user must not be able to plant facts (a config, a library list) for us.
Writes are atomic (rename), so tasks starting together never read half a file; losing the
race only costs the recomputation.
"""
from __future__ import annotations

import os


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hpccont")


def _path(kind: str, key: str) -> str:
    import hashlib
    return os.path.join(cache_dir(), f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.json")


def read(kind: str, key: str, stamp: list):
    """The cached value, or None when absent, stale or not trustworthy."""
    import json
    try:
        fd = os.open(_path(kind, key), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            return None
        with os.fdopen(fd, "r") as f:
            fd = -1
            data = json.load(f)
    except (OSError, ValueError):
        return None
    finally:
        if fd >= 0:
            os.close(fd)
    if not isinstance(data, dict) or data.get("stamp") != stamp:
        return None
    return data.get("value")


def write(kind: str, key: str, stamp: list, value) -> None:
    import json
    path = _path(kind, key)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"stamp": stamp, "value": value}, f)
        os.replace(tmp, path)
    except OSError:
        pass   # a read-only or full home only costs speed


def file_stamp(path: str) -> list:
    """What identifies a file's content cheaply: size, mtime, inode (None when missing)."""
    try:
        st = os.stat(path)
    except OSError:
        return [path, None]
    return [path, st.st_size, st.st_mtime_ns, st.st_ino]
