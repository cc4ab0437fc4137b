"""``hpccont instance stats``: what an instance uses, from /proc and its cgroup.

Apptainer reads an instance's own cgroup, which it can only create as root or through a
systemd-delegated cgroup v2.  Here an instance's processes stay in their caller's cgroup (the
batch job's, so that the job keeps accounting and killing them), which also holds processes
that are not the instance's.  So usage is summed over the instance's own processes
(instances.processes: keeper, FUSE servers, workload) from /proc, and the cgroup gives the
limits that apply to them (a job's memory limit, else the machine's memory, as Apptainer
shows without a limit):

- CPU: utime + stime of each process, plus cutime + cstime (children already reaped keep
  counting); the percentage is the growth between two samples over the wall time between
  them.  A process that ended and was reaped outside the instance drops out of the sum.
- memory: the proportional set size (Pss in smaps_rollup: shared pages split between their
  users, as a cgroup charges them once), else resident pages from statm.
- block I/O: read_bytes / write_bytes of /proc/PID/io.

The JSON is Apptainer's (``instance stats --json``: its cgroups library's Stats), with the
fields this can fill.
"""
from __future__ import annotations

import os
import time

from .instances import processes

CGROUP_ROOT = "/sys/fs/cgroup"
UNLIMITED = (1 << 64) - 1       # how the cgroups library writes "no limit" in its JSON


def sample(entry: dict) -> dict:
    """One reading of the instance's processes: Apptainer's Stats shape, plus "_time" (ns)."""
    procs = processes(entry)
    pids = [procs["keeper"], *procs["helpers"], *procs["workload"]]
    tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    user = kernel = mem = rd = wr = count = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is None:
            continue
        count += 1
        user += (int(fields[11]) + int(fields[13])) * tick
        kernel += (int(fields[12]) + int(fields[14])) * tick
        mem += _memory(pid)
        r, w = _io(pid)
        rd, wr = rd + r, wr + w
    limit, pids_max = _limits(procs["keeper"])
    stats = {"cpu_stats": {"cpu_usage": {"total_usage": user + kernel,
                                         "usage_in_kernelmode": kernel,
                                         "usage_in_usermode": user}},
             "memory_stats": {"usage": {"usage": mem, "limit": limit}},
             "pids_stats": {"current": count},
             "blkio_stats": {"io_service_bytes_recursive": [{"op": "Read", "value": rd},
                                                            {"op": "Write", "value": wr}]}}
    if pids_max:
        stats["pids_stats"]["limit"] = pids_max
    stats["_time"] = time.monotonic_ns()
    return stats


def row(name: str, before: dict, after: dict) -> list:
    """Apptainer's table cells: name, CPU %, mem usage / limit, mem %, block I/O, pids."""
    cpu = after["cpu_stats"]["cpu_usage"]["total_usage"] - \
        before["cpu_stats"]["cpu_usage"]["total_usage"]
    wall = max(after["_time"] - before["_time"], 1)
    usage = after["memory_stats"]["usage"]["usage"]
    limit = after["memory_stats"]["usage"]["limit"]
    if limit == UNLIMITED:
        limit = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    io = {e["op"]: e["value"] for e in after["blkio_stats"]["io_service_bytes_recursive"]}
    return [name, f"{max(cpu, 0) / wall * 100:.2f}%",
            f"{bytes_size(usage)} / {bytes_size(limit)}",
            f"{usage / limit * 100 if limit else 0.0:.2f}%",
            f"{bytes_size(io['Read'])} / {bytes_size(io['Write'])}",
            str(after["pids_stats"]["current"])]


HEADER = ["INSTANCE NAME", "CPU USAGE", "MEM USAGE / LIMIT", "MEM %", "BLOCK I/O", "PIDS"]
UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")


def bytes_size(n: float) -> str:
    """Docker's go-units BytesSize, which Apptainer prints: 1024-based, 4 significant digits."""
    i = 0
    n = float(n)
    while n >= 1024 and i < len(UNITS) - 1:
        n /= 1024
        i += 1
    return f"{n:.4g}{UNITS[i]}"


def _stat(pid: int) -> list | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else fields
    except (OSError, IndexError):
        return None


def _memory(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _io(pid: int) -> tuple:
    values = {}
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                key, _, value = line.partition(":")
                values[key] = int(value)
    except (OSError, ValueError):
        pass
    return values.get("read_bytes", 0), values.get("write_bytes", 0)


# Where a limit may be: (hierarchy in /proc/PID/cgroup, its mounts under CGROUP_ROOT, file,
# what it limits).  cgroup v2 ("", mounted at the root or, on hybrid hosts, at unified/) and v1.
LIMIT_FILES = (("", ("", "unified"), "memory.max", "memory"),
               ("", ("", "unified"), "pids.max", "pids"),
               ("memory", ("memory",), "memory.limit_in_bytes", "memory"),
               ("pids", ("pids",), "pids.max", "pids"))


def _limits(pid: int) -> tuple:
    """(memory limit in bytes or UNLIMITED, pids limit or 0) of ``pid``'s cgroups: the
    tightest of its cgroup and every parent's."""
    found = {"memory": 0, "pids": 0}
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return UNLIMITED, 0
    for line in lines:
        _, controllers, path = line.split(":", 2)
        names = controllers.split(",")
        for hierarchy, mounts, name, kind in LIMIT_FILES:
            if hierarchy not in names:
                continue
            for mount in mounts:
                for d in _up(os.path.join(CGROUP_ROOT, mount), path):
                    found[kind] = _tighter(found[kind], _read_int(os.path.join(d, name)))
    return found["memory"] or UNLIMITED, found["pids"]


def _up(base: str, path: str) -> list:
    """The cgroup directory of ``path`` under ``base`` and each of its parents."""
    parts = [p for p in path.split("/") if p]
    return [os.path.join(base, *parts[:i]) for i in range(len(parts), 0, -1)]


def _tighter(current: int, new: int) -> int:
    return new if new and (not current or new < current) else current


def _read_int(path: str) -> int:
    """An integer cgroup value; 0 for "max", a missing file, or v1's "no limit" (a value
    above the machine's memory)."""
    try:
        with open(path) as f:
            text = f.read().strip()
        value = int(text)
    except (OSError, ValueError):
        return 0
    if value >= (1 << 62):
        return 0
    return value
