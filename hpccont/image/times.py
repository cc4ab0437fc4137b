"""Reproducible file times that keep Python's bytecode valid.

A reproducible build cannot keep the times at which it wrote files, but setting every time to
one value (what ``mksquashfs`` does with SOURCE_DATE_EPOCH=0) breaks Python: a timestamp-based
``.pyc`` records its source's mtime and size, so once the ``.py`` says 1970 every pyc is stale
(``python3 -v``: "bytecode is stale") and every import compiles the module again, at each start,
from an image where the fresh bytecode cannot even be written back.

So times are clamped, SOURCE_DATE_EPOCH style, and only where they must be:

- an entry written by the build itself (its mtime is at or after the build's start, read from
  the filesystem's own clock) gets the fixed time;
- when SOURCE_DATE_EPOCH is given, every entry newer than it gets it too ("clamp if newer");
- every other entry keeps the time it came with (a package's, a layer's tar header's, a
  sandbox's), so the same inputs still give the same bytes;
- a timestamp ``.pyc`` that matched its source before the clamp gets the source's new mtime in
  its header, so it matches after it.  A pyc that was already stale stays stale (its code may
  not be the source's); hash-based pycs (PEP 552) do not depend on times and are left alone.

Only the stdlib is used.
"""
import os
import stat
import struct
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..rootpath import resolve

NS = 1_000_000_000
MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Clamp:
    epoch: int                       # the fixed time, seconds (SOURCE_DATE_EPOCH, else 0)
    since_ns: Optional[int] = None   # entries modified at or after this were written by the build
    newer: bool = False              # SOURCE_DATE_EPOCH given: clamp every entry newer than epoch

    def wants(self, mtime_ns: int) -> bool:
        if mtime_ns == self.epoch * NS:
            return False
        if self.since_ns is not None and mtime_ns >= self.since_ns:
            return True
        return self.newer and mtime_ns > self.epoch * NS


def fs_clock(directory: str) -> int:
    """The time (ns) a file written now in ``directory`` gets.  The kernel stamps files from a
    coarse clock that lags ``time.time_ns()`` by up to a tick; asking the filesystem gives the
    value the build's own writes are compared against."""
    fd, path = tempfile.mkstemp(prefix=".hpccont-clock-", dir=directory)
    try:
        return os.fstat(fd).st_mtime_ns
    finally:
        os.close(fd)
        os.unlink(path)


# ---------------------------------------------------------------- pyc headers
def header_layout(head: bytes) -> Optional[Tuple[int, Optional[int]]]:
    """(offset of the source mtime, offset of the source size or None) in a timestamp pyc's
    header, or None for hash-based pycs and files that are not pycs."""
    if len(head) < 8 or head[2:4] != b"\r\n":
        return None
    magic = int.from_bytes(head[:2], "little")
    if 3390 <= magic < 20000:                         # 3.7+: magic, flags, mtime, size
        if len(head) < 16 or int.from_bytes(head[4:8], "little") != 0:
            return None                               # hash-based, or flags we do not know
        return 8, 12
    if 3230 <= magic < 3390:                          # 3.3-3.6: magic, mtime, size
        return (4, 8) if len(head) >= 12 else None
    if 3000 <= magic < 3230 or 20000 <= magic < 65536:  # 3.0-3.2, 2.x: magic, mtime
        return 4, None
    return None


def pyc_matches(head: bytes, mtime: int, size: int) -> bool:
    """What the import system checks (importlib._bootstrap_external._validate_timestamp_pyc)."""
    where = header_layout(head)
    if where is None:
        return False
    at_mtime, at_size = where
    if struct.unpack_from("<I", head, at_mtime)[0] != mtime & MASK32:
        return False
    return at_size is None or struct.unpack_from("<I", head, at_size)[0] == size & MASK32


def with_mtime(head: bytes, mtime: int) -> bytes:
    at_mtime, _ = header_layout(head)
    return head[:at_mtime] + struct.pack("<I", mtime & MASK32) + head[at_mtime + 4:]


def source_path(pyc: str) -> Optional[str]:
    """The ``.py`` a pyc is checked against: ``D/__pycache__/NAME.TAG[.opt-N].pyc`` (PEP 3147,
    as importlib.util.source_from_cache) or a legacy ``D/NAME.pyc`` next to ``D/NAME.py``."""
    directory, name = os.path.split(pyc)
    if os.path.basename(directory) == "__pycache__":
        parts = name.split(".")
        if parts[-1] != "pyc" or len(parts) not in (3, 4) or \
                (len(parts) == 4 and not parts[2].startswith("opt-")) or not parts[0]:
            return None
        return os.path.join(os.path.dirname(directory), parts[0] + ".py")
    base, ext = os.path.splitext(name)
    return os.path.join(directory, base + ".py") if ext in (".pyc", ".pyo") and base else None


# ---------------------------------------------------------------- plan and apply
@dataclass
class Plan:
    root: str
    times: Dict[str, int] = field(default_factory=dict)     # path -> new mtime (seconds)
    headers: Dict[str, bytes] = field(default_factory=dict)  # pyc path -> new header
    kept: Dict[str, Tuple[int, int]] = field(default_factory=dict)  # rewritten pycs' own times

    def empty(self) -> bool:
        return not self.times and not self.headers

    def summary(self) -> str:
        return f"{len(self.times)} times clamped, {len(self.headers)} pyc headers updated"


HEAD_BYTES = 16


def plan(root: str, clamp: Clamp) -> Plan:
    """What ``clamp`` changes in the tree ``root`` (nothing is changed yet)."""
    root = os.path.abspath(root)
    p = Plan(root)
    pycs: List[Tuple[str, os.stat_result]] = []
    st = os.lstat(root)
    if clamp.wants(st.st_mtime_ns):
        p.times[root] = clamp.epoch
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if clamp.wants(st.st_mtime_ns):
                p.times[path] = clamp.epoch
            if name.endswith((".pyc", ".pyo")) and stat.S_ISREG(st.st_mode):
                pycs.append((path, st))
    for path, st in pycs:
        header = _fixed_header(p, path)
        if header is not None:
            p.headers[path] = header
            if path not in p.times:
                p.kept[path] = (st.st_atime_ns, st.st_mtime_ns)
    return p


def _fixed_header(p: Plan, pyc: str) -> Optional[bytes]:
    src = source_path(pyc)
    if src is None or not os.path.lexists(src):
        return None
    try:
        if os.path.islink(src):   # the image's link, resolved in the image, never on the host
            src = resolve(p.root, os.path.relpath(src, p.root))
        sst = os.lstat(src)
        if not stat.S_ISREG(sst.st_mode) or src not in p.times:
            return None
        with open(pyc, "rb") as f:
            head = f.read(HEAD_BYTES)
    except (OSError, ValueError):
        return None
    new = p.times[src]
    if int(sst.st_mtime) == new or not pyc_matches(head, int(sst.st_mtime), sst.st_size):
        return None
    return with_mtime(head, new)


def apply(p: Plan) -> None:
    """Make the planned changes in place.  Entries whose times cannot be set (ids not mapped in
    a user namespace) keep theirs, as they would with touch."""
    for path, head in sorted(p.headers.items()):
        try:
            with open(path, "r+b") as f:
                f.write(head)
        except OSError:
            continue
    for path, (atime_ns, mtime_ns) in p.kept.items():
        _utime(path, (atime_ns, mtime_ns))
    for path, t in p.times.items():
        _utime(path, (t * NS, t * NS))


def _utime(path: str, ns: Tuple[int, int]) -> None:
    try:
        os.utime(path, ns=ns, follow_symlinks=False)
    except OSError:
        pass


def follow_copy(src: str, dst: str) -> int:
    """After ``cp -r SRC DST`` (which gives the copies new times): a pyc under DST that matched
    its source on the host gets the copied source's new mtime, so the pair still matches and
    the clamp later keeps it so.  Host paths are followed as ``cp -L`` did.  Returns how many
    headers were updated."""
    if not os.path.isdir(dst) or os.path.islink(dst):
        return 0
    done = 0
    for dirpath, _, filenames in os.walk(dst):
        for name in filenames:
            if not name.endswith((".pyc", ".pyo")):
                continue
            copy = os.path.join(dirpath, name)
            host = os.path.join(src, os.path.relpath(copy, dst))
            host_py, copy_py = source_path(host), source_path(copy)
            try:
                hst = os.stat(host_py) if host_py else None
                cst = os.lstat(copy_py) if copy_py else None
                if hst is None or cst is None or not stat.S_ISREG(cst.st_mode) or \
                        cst.st_size != hst.st_size or int(cst.st_mtime) == int(hst.st_mtime):
                    continue
                with open(copy, "r+b") as f:
                    head = f.read(HEAD_BYTES)
                    if not pyc_matches(head, int(hst.st_mtime), hst.st_size):
                        continue
                    f.seek(0)
                    f.write(with_mtime(head, int(cst.st_mtime)))
                done += 1
            except (OSError, TypeError):
                continue
    return done


def normalise(root: str, clamp: Clamp) -> Plan:
    """Clamp the times of the tree ``root`` in place and keep its pycs valid; returns the plan."""
    p = plan(root, clamp)
    apply(p)
    return p
