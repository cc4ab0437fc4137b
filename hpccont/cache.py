"""A per-user cache of computed facts, for work too slow to redo on every task of every job.

Each entry is a JSON file in ``$XDG_CACHE_HOME/hpccont`` (``~/.cache/hpccont``) holding a
*stamp* (what the fact was computed from: sizes, mtimes, ctimes, settings), the key it was
computed for, and the value.  A stale stamp recomputes.  File stamps hold the inode change time
(ctime), which the file's owner cannot set back: a file rewritten in place with its size and mtime restored
still changes its ctime.  An entry is trusted only if it and its directory belong to the user
and nobody else can write them: another user must not be able to plant facts (a config, a
library list) for us, nor swap entries around in a directory they control.  The user, of
course, can write their own cache: it is never a security boundary against them (see
docs/security.md).  Writes are atomic (rename), so tasks starting together never read half a
file; losing the race only costs the recomputation.
"""
from __future__ import annotations

import os


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hpccont")


def _path(kind: str, key: str) -> str:
    from .digest import text_sha256
    return os.path.join(cache_dir(), f"{kind}-{text_sha256(key)[:24]}.json")


def _private(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def read(kind: str, key: str, stamp: list):
    """The cached value, or None when absent, stale or not trustworthy."""
    import stat
    path = _path(kind, key)
    try:
        top = os.lstat(os.path.dirname(path))
        if not stat.S_ISDIR(top.st_mode) or not _private(top):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not _private(st) or not stat.S_ISREG(st.st_mode):
            return None
        with os.fdopen(fd, "r") as f:
            fd = -1
            data = loads(f.read())
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        if fd >= 0:
            os.close(fd)
    if not isinstance(data, dict) or data.get("stamp") != stamp or data.get("key") != key:
        return None
    return data.get("value")


class _Scanning:
    """What the C JSON scanner reads from its context (json.decoder.JSONDecoder's fields)."""
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float       # NaN, Infinity, -Infinity


def loads(text: str):
    """json.loads for the entries ``write`` makes, through the C scanner alone: the json
    package imports re and enum (~7 ms measured), paid by every launch on a node with a site
    config (its parsed copy lives here).  ValueError when ``text`` is not one JSON value."""
    try:
        from _json import make_scanner
    except ImportError:          # an interpreter without the accelerator
        import json
        return json.loads(text)
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        value, end = make_scanner(_Scanning())(text, start)
    except StopIteration:
        raise ValueError("not a JSON value") from None
    if text[end:].strip(" \t\n\r"):
        raise ValueError("extra data after the JSON value")
    return value


def dumps(value, sort_keys: bool = False) -> str:
    """json.dumps(value, sort_keys=...) through the C encoder alone (loads says why), for
    values made of dicts, lists, strings, ints, floats, booleans and None."""
    try:
        from _json import encode_basestring_ascii, make_encoder
    except ImportError:
        import json
        return json.dumps(value, sort_keys=sort_keys)

    def unknown(o):
        raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")
    encode = make_encoder({}, unknown, encode_basestring_ascii, None, ": ", ", ", sort_keys,
                          False, True)
    return "".join(encode(value, 0))


def write(kind: str, key: str, stamp: list, value) -> None:
    import json
    path = _path(kind, key)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"key": key, "stamp": stamp, "value": value}, f)
        os.replace(tmp, path)
    except OSError:
        pass   # a read-only or full home only costs speed


def file_stamp(path: str) -> list:
    """What identifies a file's content cheaply: size, mtime, ctime, device and inode (None
    when missing).  ctime changes with every write (and utime) and cannot be set back."""
    try:
        st = os.stat(path)
    except OSError:
        return [path, None]
    return [path] + stat_stamp(st)


def stat_stamp(st: os.stat_result) -> list:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino]
