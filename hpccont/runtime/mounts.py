"""The default mount table and bind-spec parsing.

Policy is data: DEFAULT_MOUNTS lists what every container gets and which site setting turns
each entry off.  ``default_mounts`` expands it for one request; ``parse_binds`` turns
``-B src[:dst[:ro|rw]],...`` into Bind objects with one-line errors for bad specs.
"""
from __future__ import annotations

import os

from ..errors import BindError
from .plan_types import Mount
from .request import Bind

# (target, kind, source, site switch in config["mounts"], why).  Order matters: later mounts
# may sit inside earlier ones.  /dev, /proc and /sys are recursive binds of the host's:
# a user namespace without its own PID namespace may not mount a fresh procfs, and a
# recursive bind keeps the submounts (/dev/pts, /dev/shm, /sys/fs/cgroup...).
DEFAULT_MOUNTS: tuple[tuple[str, str, str, str, str], ...] = (
    ("/proc", "bind", "/proc", "proc", "default: host /proc"),
    ("/sys", "bind", "/sys", "sys", "default: host /sys"),
    ("/dev", "bind", "/dev", "dev", "default: host /dev"),
    ("/tmp", "bind", "/tmp", "tmp", "default: host /tmp"),
    ("/var/tmp", "bind", "/var/tmp", "tmp", "default: host /var/tmp"),
)

# --contain replaces the host's /tmp and /var/tmp with private tmpfs.
CONTAINED_TMP = ("/tmp", "/var/tmp")
# The host files and site binds --contain keeps, as Apptainer keeps these two of its "bind path"
# entries: name resolution of local hosts and the local time zone are not the host's data.
CONTAIN_KEEPS = ("/etc/hosts", "/etc/localtime")

# Apptainer's minimal /dev (--contain, --containall, site ``mounts.dev: minimal``, its
# ``mount dev = minimal``): a fresh tmpfs holding only these host nodes, so a contained
# program sees no disks, no GPUs and no other users' terminals.  Devices asked for (--nv,
# --rocm, -B /dev/X) are bound in after it.
MINIMAL_DEV_NODES = ("/dev/tty", "/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
# The links every Linux /dev has; they point through /proc, as the kernel's own do.
MINIMAL_DEV_LINKS = (("/dev/fd", "/proc/self/fd"), ("/dev/stdin", "/proc/self/fd/0"),
                     ("/dev/stdout", "/proc/self/fd/1"), ("/dev/stderr", "/proc/self/fd/2"))
# A private devpts instance: the container's terminals, not the host's.  No gid= option:
# under a user namespace the host's tty group is not mapped (Apptainer leaves it out too).
DEVPTS_OPTIONS = "newinstance,ptmxmode=0666,mode=0620"

OPTIONS = {"ro": True, "rw": False}


def parse_bind(spec: str) -> Bind:
    """``src``, ``src:dst``, ``src:dst:ro``, ``src:dst:rw``.  Paths are made absolute."""
    spec = spec.strip()
    if not spec:
        raise BindError("empty bind spec")
    parts = spec.split(":")
    if len(parts) > 3:
        raise BindError(f"bad bind spec {spec!r}: expected SRC[:DST[:ro|rw]]")
    src = parts[0]
    if len(parts) == 2 and not parts[1]:
        # "SRC:" is an unset variable or a typo; "SRC::ro" says "same place, read-only".
        raise BindError(f"bad bind spec {spec!r}: empty destination")
    dst = parts[1] if len(parts) > 1 and parts[1] else src
    readonly = False
    if len(parts) == 3:
        if parts[2] not in OPTIONS:
            raise BindError(f"bad bind option {parts[2]!r} in {spec!r}: use ro or rw")
        readonly = OPTIONS[parts[2]]
    if not src:
        raise BindError(f"bad bind spec {spec!r}: empty source")
    if not dst.startswith("/"):
        raise BindError(f"bad bind spec {spec!r}: destination must be an absolute path")
    refuse_climbing(dst)
    return Bind(src=os.path.abspath(src), dst=os.path.normpath(dst), readonly=readonly)


def refuse_climbing(dst: str) -> None:
    """``/../x`` would be clamped to ``/x`` by a path lookup; a bind spec saying so is a mistake
    or an attempt, and is refused rather than silently reinterpreted."""
    depth = 0
    for part in dst.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise BindError(f"bind destination {dst} escapes the container root")
        elif part and part != ".":
            depth += 1


def parse_binds(specs: list[str]) -> list[Bind]:
    """Each entry may itself be a comma list (``-B a,b:/b``, ``HPCCONT_BIND``)."""
    return [parse_bind(s) for spec in specs for s in spec.split(",") if s.strip()]


def check_bind_source(bind: Bind, denylist: list[str] = ()) -> None:
    """The source must exist and be readable by the caller; some paths are never bindable."""
    real = os.path.realpath(bind.src)
    for denied in denylist:
        if real == denied or real.startswith(denied.rstrip("/") + "/"):
            raise BindError(f"bind source {bind.src} is not allowed by the site configuration")
    try:
        os.stat(bind.src)
    except FileNotFoundError:
        raise BindError(f"bind source {bind.src} does not exist")
    except PermissionError:
        raise BindError(f"bind source {bind.src}: permission denied")
    if not os.access(bind.src, os.R_OK):
        raise BindError(f"bind source {bind.src}: permission denied")


def default_mounts(cfg: dict[str, object], *, contain: bool, ipc: bool = False,
                   devpts: bool = True, console: str | None = None) -> list[Mount]:
    out = []
    for target, kind, source, switch, why in DEFAULT_MOUNTS:
        if not cfg.get(switch, True):
            continue
        if target == "/dev" and (contain or cfg.get(switch) == "minimal"):
            out += minimal_dev("--contain" if contain else "mounts.dev: minimal", ipc=ipc,
                               devpts=devpts, console=console)
            continue
        if contain and target in CONTAINED_TMP:
            out.append(Mount(kind="tmpfs", target=target, why="--contain: private tmpfs"))
            continue
        out.append(Mount(kind=kind, target=target, source=source, why=why))
    for f in cfg.get("hostfiles", []):
        if not contain or f in CONTAIN_KEEPS:
            out.append(Mount(kind="bind", target=f, source=f, readonly=True, optional=True,
                             why="default: host file"))
    return out


def minimal_dev(why: str, *, ipc: bool, devpts: bool, console: str | None) -> list[Mount]:
    """The mounts of a minimal /dev, in order (Apptainer's list).

    ``ipc``: a new IPC namespace gets its own POSIX message queues at /dev/mqueue (an mqueue
    mount shows the queues of the mounter's IPC namespace, so only a private one is safe).
    ``console``: the caller's terminal, bound at /dev/console as Apptainer does.
    """
    why = f"{why}: minimal /dev"
    out = [Mount(kind="tmpfs", target="/dev", why=why, options="mode=0755"),
           Mount(kind="tmpfs", target="/dev/shm", why=why, options="mode=1777")]
    if ipc:
        out.append(Mount(kind="fs", target="/dev/mqueue", source="mqueue", why=why))
    if devpts:
        out.append(Mount(kind="fs", target="/dev/pts", source="devpts", why=why,
                         options=DEVPTS_OPTIONS))
        out.append(Mount(kind="symlink", target="/dev/ptmx", source="pts/ptmx", why=why))
    if console:
        out.append(Mount(kind="dev", target="/dev/console", source=console, optional=True,
                         why=why))
    out += [Mount(kind="dev", target=p, source=p, optional=True, why=why)
            for p in MINIMAL_DEV_NODES]
    out += [Mount(kind="symlink", target=t, source=link, why=why)
            for t, link in MINIMAL_DEV_LINKS]
    return out


def caller_terminal() -> str | None:
    """The terminal on the caller's stdin, stdout or stderr, if any (for /dev/console)."""
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                path = os.ttyname(fd)
                if os.path.exists(path):
                    return path
        except OSError:
            continue
    return None


def bind_mount(b: Bind, why: str) -> Mount:
    return Mount(kind="bind", target=b.dst, source=b.src, readonly=b.readonly, why=why)


def under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def dedupe(mounts: list[Mount]) -> list[Mount]:
    """A later mount on the same target replaces an earlier one (user -B wins over defaults)."""
    last: dict[str, int] = {}
    for i, m in enumerate(mounts):
        last[m.target] = i
    return [m for i, m in enumerate(mounts) if last[m.target] == i]


def resolve_in_root(root: str, target: str, clamp: bool = False) -> str:
    """Host path where container path ``target`` lies inside ``root`` (which may not exist yet).

    Symlinks in the image are followed as the container would see them; a path that climbs
    above the root through ``..`` or a symlink is refused: binding there would mount onto the
    host.  ``clamp``: ``..`` above the root stays at the root instead, as the kernel resolves
    it inside the container.
    """
    from ..rootpath import resolve

    def refuse(message: str) -> BindError:
        return BindError(f"bind destination {message}")
    return resolve(root, target, escape="clamp" if clamp else "refuse", error=refuse)
