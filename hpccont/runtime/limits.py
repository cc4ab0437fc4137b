"""``--cpus`` and ``--memory``: Apptainer's resource limits, through a cgroup the user may manage.

Apptainer applies them with a cgroup of its own (root, or a systemd-delegated cgroup v2 for
users).  hpccont does the unprivileged half, with the kernel's cgroup v2 rules:

- a cgroup's children can use a controller only when the cgroup enables it in its
  ``cgroup.subtree_control``, and a cgroup that enables any may hold no process itself ("no
  internal processes"), so the caller's own cgroup, which holds the caller, enables none;
- a process may move between two cgroups when it can write the ``cgroup.procs`` of their
  nearest common ancestor (delegation: the subtree was chown'ed to the user, as systemd does).

So the child ``hpccont-PID`` goes under the nearest ancestor of the caller's cgroup that is
delegated to the caller and enables the controllers (systemd's user@UID.service, whose
processes sit in leaves), or else under the caller's own cgroup when it is delegated and
offers them: the process moves into the child first, then enables the controllers for it,
which the kernel allows once no other process is left there.  It writes ``cpu.max`` /
``memory.max`` and execs the container from there (the command inherits the cgroup).
Anywhere else (cgroup v1, a cgroup owned by root, no controllers) the limits are not applied
and the launch says so in one warning; inside a batch job the job's own limits apply anyway.

The unified hierarchy is wherever the kernel's cgroup2 filesystem is mounted: /sys/fs/cgroup
on a unified host, /sys/fs/cgroup/unified on a hybrid one (systemd's), where the memory and cpu
controllers stay bound to their v1 hierarchies and so cannot be offered to anybody's v2 cgroup;
the warning says which case a host is.

Planning (``plan_limits``) reads files only; ``join_cgroup`` (called by apply) writes.
"""
from __future__ import annotations

import os

from ..errors import UsageError

CGROUP_ROOT = "/sys/fs/cgroup"
PERIOD = 100000          # cpu.max period in microseconds (Apptainer's and the kernel's default)
SUFFIXES = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_cpus(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--cpus {text!r}: expected a number of CPUs, e.g. 2 or 0.5") from None
    if not value > 0:
        raise UsageError(f"--cpus {text!r}: must be more than 0")
    return value


def parse_memory(text: str) -> int:
    """Bytes, with an optional k/m/g/t suffix (Docker's and Apptainer's units, 1024-based)."""
    t = text.strip().lower()
    unit = t[-1] if t and t[-1] in "bkmgt" else ""
    number = t[:-1] if unit else t
    try:
        value = int(float(number) * SUFFIXES[unit])
    except ValueError:
        raise UsageError(f"--memory {text!r}: expected bytes, e.g. 512m or 2g") from None
    if value <= 0:
        raise UsageError(f"--memory {text!r}: must be more than 0")
    return value


def own_cgroup(proc_self: str = "/proc/self/cgroup") -> str | None:
    """This process's cgroup v2 path ("0::/user.slice/..."), or None on a v1-only host."""
    try:
        with open(proc_self) as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


def unified_mount(mountinfo: str = "/proc/self/mountinfo") -> str:
    """Where the cgroup2 filesystem is mounted (CGROUP_ROOT when it is not, or cannot be read)."""
    try:
        with open(mountinfo) as f:
            for line in f:
                left, sep, right = line.partition(" - ")
                if sep and right.split(" ", 1)[0] == "cgroup2":
                    return left.split(" ")[4]
    except OSError:
        pass
    return CGROUP_ROOT


def plan_limits(cpus: str | None, memory: str | None, environ, root: str | None = None,
                proc_self: str = "/proc/self/cgroup") -> tuple[dict | None, str | None]:
    """(cgroup to join: {"path", "files"}, or None; the warning when the limits cannot apply)."""
    files: dict[str, str] = {}
    if cpus:
        files["cpu.max"] = f"{int(parse_cpus(cpus) * PERIOD)} {PERIOD}"
    if memory:
        files["memory.max"] = str(parse_memory(memory))
    asked = " and ".join(n for n, v in (("--cpus", cpus), ("--memory", memory)) if v)
    in_job = next((v for v in ("SLURM_JOB_ID", "PBS_JOBID") if environ.get(v)), None)
    spec, why = plan_cgroup(files, root, proc_self)
    if spec is None:
        where = (f"; inside this batch job ({in_job}={environ[in_job]}) the job's own limits "
                 "apply") if in_job else ""
        return None, f"{asked} not applied: {why}{where}"
    return spec, None


def plan_cgroup(files: dict, root: str | None = None, proc_self: str = "/proc/self/cgroup"
                ) -> tuple[dict | None, str | None]:
    """The cgroup this process would make and join to write ``files`` (controller interface
    files: ``memory.max``...): ({"path", "files", "enable"}, None) or (None, why not)."""
    place, why = _delegated_parent(files, root or unified_mount(), proc_self)
    if place is None:
        return None, why
    return {"path": os.path.join(place["under"], f"hpccont-{os.getpid()}"), "files": files,
            "enable": place["enable"]}, None


def _controllers(directory: str, name: str = "cgroup.controllers") -> set | None:
    try:
        with open(os.path.join(directory, name)) as f:
            return set(f.read().split())
    except OSError:
        return None


def _delegated(directory: str) -> bool:
    return (os.access(directory, os.W_OK)
            and os.access(os.path.join(directory, "cgroup.procs"), os.W_OK))


def _delegated_parent(files: dict, root: str, proc_self: str) -> tuple:
    """({"under": directory, "enable": the cgroup to enable the controllers in, or ""}, None)
    or (None, why there is none)."""
    rel = own_cgroup(proc_self)
    if rel is None or _controllers(root) is None:
        return None, "no unified cgroup (v2) hierarchy on this host"
    wanted = {name.split(".")[0] for name in files}
    unbound = sorted(wanted - _controllers(root))
    if unbound:
        # Bound to a cgroup v1 hierarchy (a hybrid host): no v2 cgroup can have it.
        return None, (f"the {', '.join(unbound)} controller is not in this host's cgroup v2 "
                      f"hierarchy ({root}; cgroup v1 holds it)")
    own = os.path.join(root, rel.lstrip("/"))
    ancestor = os.path.dirname(own)
    while len(ancestor) >= len(root) and ancestor.startswith(root):
        if wanted <= (_controllers(ancestor, "cgroup.subtree_control") or set()) \
                and _delegated(ancestor):
            return {"under": ancestor, "enable": ""}, None
        ancestor = os.path.dirname(ancestor)
    available = _controllers(own)
    if available is None:
        return None, f"cgroup {rel} cannot be read"
    missing = sorted(wanted - available)
    if missing:
        return None, f"your cgroup {rel} does not offer the {', '.join(missing)} controller"
    if not _delegated(own):
        return None, f"your cgroup {rel} is not delegated to you"
    return {"under": own, "enable": own}, None


def join_cgroup(spec: dict) -> None:
    """Make the planned cgroup, move this process into it, enable the controllers where the
    plan says, and write the limits."""
    path = spec["path"]
    _sweep(os.path.dirname(path))
    os.mkdir(path, 0o755)
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    if spec.get("enable"):
        # EBUSY while another process is still in that cgroup (no internal processes)
        with open(os.path.join(spec["enable"], "cgroup.subtree_control"), "w") as f:
            f.write(" ".join(sorted({"+" + n.split(".")[0] for n in spec["files"]})))
    for name, value in spec["files"].items():
        with open(os.path.join(path, name), "w") as f:
            f.write(value)


def _sweep(under: str) -> None:
    """Remove the cgroups earlier launches left (the command was exec'd from them, nobody
    waited to clean up).  rmdir of a cgroup that still has a process or a child fails (EBUSY):
    only empty ones go."""
    try:
        names = [n for n in os.listdir(under) if n.startswith("hpccont-")]
    except OSError:
        return
    for name in names:
        pid = name[len("hpccont-"):]
        if pid.isdigit() and os.path.exists(f"/proc/{pid}"):
            continue        # its launch may be between mkdir and moving in
        try:
            os.rmdir(os.path.join(under, name))
        except OSError:
            pass
