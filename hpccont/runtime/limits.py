"""``--cpus`` and ``--memory``: Apptainer's resource limits, through a cgroup the user may manage.

Apptainer applies them with a cgroup of its own (root, or a systemd-delegated cgroup v2 for
users).  hpccont does the unprivileged half: when the caller's own cgroup (cgroup v2) is
writable by the caller and offers the controllers, a child cgroup ``hpccont-PID`` is made
there with ``cpu.max`` / ``memory.max``, and the launching process moves into it before it
creates the container (the command inherits it).  Anywhere else (cgroup v1, a cgroup owned by
root, no controllers) the limits are not applied and the launch says so in one warning; inside
a batch job the job's own limits apply anyway.

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


def plan_limits(cpus: str | None, memory: str | None, environ, root: str = CGROUP_ROOT,
                proc_self: str = "/proc/self/cgroup") -> tuple[dict | None, str | None]:
    """(cgroup to join: {"path", "files"}, or None; the warning when the limits cannot apply)."""
    files: dict[str, str] = {}
    if cpus:
        files["cpu.max"] = f"{int(parse_cpus(cpus) * PERIOD)} {PERIOD}"
    if memory:
        files["memory.max"] = str(parse_memory(memory))
    asked = " and ".join(n for n, v in (("--cpus", cpus), ("--memory", memory)) if v)
    in_job = next((v for v in ("SLURM_JOB_ID", "PBS_JOBID") if environ.get(v)), None)
    parent, why = _delegated_parent(files, root, proc_self)
    if parent is None:
        where = (f"; inside this batch job ({in_job}={environ[in_job]}) the job's own limits "
                 "apply") if in_job else ""
        return None, f"{asked} not applied: {why}{where}"
    return {"path": os.path.join(parent, f"hpccont-{os.getpid()}"), "files": files}, None


def _delegated_parent(files: dict, root: str, proc_self: str) -> tuple:
    """(the cgroup directory to create the child in, None) or (None, why there is none)."""
    rel = own_cgroup(proc_self)
    if rel is None or not os.path.isfile(os.path.join(root, "cgroup.controllers")):
        return None, "no unified cgroup (v2) hierarchy on this host"
    parent = os.path.join(root, rel.lstrip("/"))
    try:
        with open(os.path.join(parent, "cgroup.controllers")) as f:
            available = set(f.read().split())
    except OSError:
        return None, f"cgroup {rel} cannot be read"
    missing = sorted({name.split(".")[0] for name in files} - available)
    if missing:
        return None, f"your cgroup {rel} does not offer the {', '.join(missing)} controller"
    if not (os.access(parent, os.W_OK) and os.access(os.path.join(parent, "cgroup.procs"),
                                                     os.W_OK)):
        return None, f"your cgroup {rel} is not delegated to you"
    return parent, None


def join_cgroup(spec: dict) -> None:
    """Make the planned cgroup, write its limits, and move this process into it."""
    path = spec["path"]
    os.mkdir(path, 0o755)
    parent = os.path.dirname(path)
    try:   # the controllers must be enabled for children in the parent
        with open(os.path.join(parent, "cgroup.subtree_control"), "w") as f:
            f.write(" ".join("+" + n.split(".")[0] for n in spec["files"]))
    except OSError:
        pass
    for name, value in spec["files"].items():
        with open(os.path.join(path, name), "w") as f:
            f.write(value)
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
