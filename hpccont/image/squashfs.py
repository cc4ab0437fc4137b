"""Squashfs filesystems: make them with mksquashfs, read them with unsquashfs, never mount here.

Every function takes the byte ``offset`` of the filesystem in its file, so the same calls work on
a plain squashfs file (offset 0) and on the partition inside a SIF.  Failures are one-line
errors naming the tool and its last complaint.
"""
from __future__ import annotations

import os
TYPE_CHECKING = False   # as typing.TYPE_CHECKING: MPI discovery reads images on the launch path
if TYPE_CHECKING:
    from typing import List, Optional, Sequence

from ..config import CHOICES
from ..errors import BuildError, ConfigError, ImageError

# Compressors squashfs-tools 4.5 supports and the kernel here can read (the site config's
# build.compression takes the same names).
COMPRESSORS = CHOICES[("build", "compression")]


# Compressors with a level option, and their highest level.
LEVELS = {"zstd": 22, "gzip": 9}


def site_compression_args() -> List[str]:
    """The site's squashfs compression (build.compression/compression_level) as mksquashfs
    arguments; ``--mksquashfs-args "-comp ..."`` replaces them."""
    from .. import config
    build = config.load()["build"]
    comp, level = build["compression"], build["compression_level"]
    args = ["-comp", comp]
    if level and comp in LEVELS:
        if level > LEVELS[comp]:
            raise ConfigError(f"build.compression_level {level} is out of range for {comp} "
                              f"(1-{LEVELS[comp]})")
        args += ["-Xcompression-level", str(level)]
    return args


def _tool(name: str) -> str:
    import shutil
    path = shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}")
                                       if os.access(p, os.X_OK)), None)
    if path is None:
        raise ImageError(f"{name} not found (install squashfs-tools)")
    return path


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


def mksquashfs_argv(src: str, out: str, *, comp: Optional[str] = None,
                    extra_args: Sequence[str] = (), all_root: Optional[bool] = None) -> List[str]:
    """The mksquashfs command line for packing directory ``src`` into ``out``.

    As Apptainer does: ``-noappend`` always; ``-all-root`` when not building as root, because
    files an unprivileged user owns would otherwise show up as owned by an arbitrary uid
    inside the container of whoever runs it.
    """
    if comp is not None and comp not in COMPRESSORS:
        raise BuildError(f"unknown squashfs compression {comp!r} (one of {', '.join(COMPRESSORS)})")
    argv = [_tool("mksquashfs"), src, out, "-noappend", "-no-progress", "-quiet"]
    if all_root is None:
        all_root = os.geteuid() != 0
    if all_root:
        argv.append("-all-root")
    if comp:
        argv += ["-comp", comp]
    argv += list(extra_args)
    return argv


TIME_OPTIONS = ("-mkfs-time", "-fstime")


def mksquashfs(src: str, out: str, *, comp: Optional[str] = None,
               extra_args: Sequence[str] = (), all_root: Optional[bool] = None,
               mkfs_time: Optional[int] = None) -> None:
    """Pack ``src`` into ``out``.  With ``mkfs_time`` (a reproducible build, whose times the
    caller has clamped already: see times.py) the files keep the times they have and the
    superblock gets ``mkfs_time``: SOURCE_DATE_EPOCH is not passed on, since mksquashfs would
    clamp every file newer than it."""
    if not os.path.isdir(src):
        raise BuildError(f"cannot pack {src}: not a directory")
    env = None
    if mkfs_time is not None:
        env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
        if not any(a in TIME_OPTIONS for a in extra_args):
            extra_args = ["-mkfs-time", str(mkfs_time), *extra_args]
    argv = mksquashfs_argv(src, out, comp=comp, extra_args=extra_args, all_root=all_root)
    from .leftovers import die_with_parent     # a killed build takes mksquashfs with it
    import subprocess
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                       preexec_fn=die_with_parent)
    if r.returncode != 0:
        text = r.stderr or r.stdout
        if "No space left on device" in text:      # its last line only says "failed to write"
            raise BuildError(f"mksquashfs failed: no space left on device in "
                             f"{os.path.dirname(os.path.abspath(out))}")
        raise BuildError(f"mksquashfs failed: {_last_line(text)}")


def _unsquashfs(image: str, offset: int, args: Sequence[str], binary: bool = False,
                timeout: Optional[float] = None):
    """The one place unsquashfs runs (inspect, modules, MPI discovery, builds all come here)."""
    argv = [_tool("unsquashfs"), "-o", str(offset), *args]
    from .leftovers import die_with_parent     # a killed build or inspect takes it along
    import subprocess
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=not binary, errors=None if binary else "replace",
                              timeout=timeout, preexec_fn=die_with_parent)
    except subprocess.TimeoutExpired:
        raise ImageError(f"unsquashfs on {image} took longer than {timeout:.0f} s") from None


def cat_file(image: str, path: str, offset: int = 0, timeout: float = 120) -> Optional[bytes]:
    """Contents of regular file ``path`` (relative to the filesystem root), None if absent."""
    r = _unsquashfs(image, offset, ["-cat", image, path.lstrip("/")], binary=True,
                    timeout=timeout)
    if r.returncode != 0:
        return None
    return r.stdout


def list_paths(image: str, offset: int = 0, under: str = "") -> List[str]:
    """Paths in the filesystem (relative, no leading slash), optionally only those under a dir."""
    args = ["-l", "-d", "", image]
    if under:
        args.append(under.lstrip("/"))
    r = _unsquashfs(image, offset, args)
    if r.returncode != 0:
        raise ImageError(f"unsquashfs cannot read {image}: {_last_line(r.stderr)}")
    out = []
    for line in r.stdout.splitlines():
        if line.startswith("/"):
            out.append(line.lstrip("/"))
    return [p for p in out if p]


def long_listing(image: str, offset: int = 0, timeout: float = 120) -> List[str]:
    """``ls -l``-style lines of every entry, paths from the root without "squashfs-root"
    (type and mode first; a symlink's line ends ``NAME -> TARGET``)."""
    r = _unsquashfs(image, offset, ["-lls", "-d", "", image], timeout=timeout)
    if r.returncode != 0:
        raise ImageError(f"unsquashfs cannot list {image}: {_last_line(r.stderr or r.stdout)}")
    return r.stdout.splitlines()


def extract(image: str, dest: str, offset: int = 0, paths: Sequence[str] = (),
            into_existing: bool = False) -> None:
    """Unpack the filesystem (or only ``paths``) into directory ``dest`` (which must not exist,
    unless ``into_existing``)."""
    args = ["-d", dest, "-n", "-q"] + (["-f"] if into_existing else [])
    if os.geteuid() != 0:
        args.append("-no-xattrs")
    import tempfile
    with tempfile.NamedTemporaryFile("w", prefix="hpccont-exclude-", suffix=".txt") as excl:
        if _cannot_mknod():
            # Root of a user namespace (--fakeroot) may not create device nodes; the runtime
            # binds the host's /dev over the image's anyway, so they are left out.
            excl.write("".join(f"{d}\n" for d in device_nodes(image, offset)))
            excl.flush()
            args += ["-exclude-file", excl.name]
        args += [image, *[p.lstrip("/") for p in paths]]
        r = _unsquashfs(image, offset, args)
    if r.returncode != 0:
        raise ImageError(f"unsquashfs failed on {image}: {_last_line(r.stderr or r.stdout)}")


def _cannot_mknod() -> bool:
    """Not root, or root of a user namespace (whose uid map is not the identity of all ids)."""
    if os.geteuid() != 0:
        return True
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return False


def device_nodes(image: str, offset: int = 0) -> list:
    """Paths (relative to the image root) of the character and block devices in the image."""
    r = _unsquashfs(image, offset, ["-lls", image])
    out = []
    for line in r.stdout.splitlines():
        if line[:1] in ("c", "b") and " squashfs-root/" in line:
            out.append(line.split(" squashfs-root/", 1)[1])
    return out
