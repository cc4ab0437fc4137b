"""Many launches of one image at once, as two users, and what they leave: shared by bench/load
(500 launches, 50 at a time) and tests/faults/test_load.py (a small version of it).

A launch is one ``hpccont exec IMG /bin/true`` or one ``srun --container=IMG /bin/true`` (a
job of its own: allocation, step, plugin, container), timed from the caller's side.  Users
alternate launch by launch.  Leaks are counted around the whole run, once everything had
time to settle: mounts naming the image, processes holding it (FUSE servers, keepers,
readers), loop devices backed by it, processes the run started (they carry its users'
XDG_RUNTIME_DIR), descriptors of the Slurm daemons, files under each user's state and cache directories and the Slurm spool.
"""
import os
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from faultlib import host_mounts, image_holders, loop_devices, tree


class LoadUser:
    """One of the two users: ids, a login-like environment with its own state and cache
    directories (so that their content is this run's alone)."""

    def __init__(self, pw, base: Path, extra_env=None):
        self.pw = pw
        self.name = pw.pw_name if pw else "root"
        base.mkdir(parents=True, exist_ok=True)
        base.chmod(0o755)
        home = base / self.name
        run, cache = home / "run", home / "cache"
        for d in (home, run, cache):
            d.mkdir(mode=0o700, exist_ok=True)
            if pw:
                os.chown(d, pw.pw_uid, pw.pw_gid)
        self.dirs = [str(run), str(cache)]
        self.env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
                    "HOME": pw.pw_dir if pw else "/root", "USER": self.name,
                    "LOGNAME": self.name, "XDG_RUNTIME_DIR": str(run),
                    "XDG_CACHE_HOME": str(cache), **(extra_env or {})}
        self.ids = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[]) if pw else {}

    def run(self, argv, cwd):
        t = time.perf_counter()
        r = subprocess.run(argv, env=self.env, cwd=cwd, capture_output=True, text=True,
                           timeout=600, **self.ids)
        return time.perf_counter() - t, r


def exec_argv(hpccont, image):
    return [str(hpccont), "exec", str(image), "/bin/true"]


def srun_argv(image):
    return ["srun", "-n", "1", "--oversubscribe", f"--container={image}", "/bin/true"]


def processes_of(markers) -> list:
    """Live processes started by this run: they carry one of its users' XDG_RUNTIME_DIR in
    their environment (each run has its own; other users of the machine never do)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state in ("Z", "X") or not markers & set(env):
                continue
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        found.append(f"{pid} {cmd.strip()[:120]}")
    return found


def fd_count(names) -> int:
    """Open descriptors of the processes called ``names`` (the Slurm daemons)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() in names:
                total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return total


def snapshot(image, users, extra_dirs=(), daemons=()) -> dict:
    markers = {f"XDG_RUNTIME_DIR={u.env['XDG_RUNTIME_DIR']}".encode() for u in users}
    files = {}
    for d in [*(d for u in users for d in u.dirs), *map(str, extra_dirs)]:
        files[d] = tree(d)
    return {"mounts": len(host_mounts(str(image))), "holders": len(image_holders(str(image))),
            "loops": len(loop_devices(str(image))), "processes": processes_of(markers),
            "fds": fd_count(daemons), "files": files}


def leaks(before: dict, after: dict) -> dict:
    """What grew: counts, and the files that were not there before."""
    out = {k: after[k] - before[k] for k in ("mounts", "holders", "loops", "fds")
           if after[k] > before[k]}
    grown = sorted(set(after["processes"]) - set(before["processes"]))
    if grown:
        out["processes"] = grown
    new = {d: sorted(after["files"][d] - before["files"].get(d, set()))
           for d in after["files"]}
    new = {d: f for d, f in new.items() if f}
    if new:
        out["files"] = new
    return out


def settle(image, users, seconds=15.0, extra_dirs=(), daemons=(), baseline=None):
    """A snapshot once nothing holds the image and (given ``baseline``) nothing is left over
    it, or the last one taken after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        snap = snapshot(image, users, extra_dirs, daemons)
        done = snap["holders"] == 0 and (baseline is None or not leaks(baseline, snap))
        if done or time.monotonic() > deadline:
            return snap
        time.sleep(0.2)


def run_load(argv, users, total, parallel, cwd) -> dict:
    """``total`` launches of ``argv``, ``parallel`` at a time, users taking turns."""
    def one(i):
        return users[i % len(users)].run(argv, cwd)
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        results = list(pool.map(one, range(total)))
    times = sorted(t for t, _ in results)
    failures = [r for _, r in results if r.returncode != 0]
    return {"launches": total, "parallel": parallel, "failures": len(failures),
            "first_failure": (failures[0].stderr.strip().splitlines() or ["?"])[-1]
            if failures else None,
            "median_s": statistics.median(times),
            "p99_s": times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))],
            "max_s": times[-1]}


def warm(argv, users, cwd, probe=True) -> None:
    """One launch per user first (caches written once are not leaks), which also proves that
    the command runs in the container: the image's /etc/hostname, not the host's."""
    probe_argv = argv[:-1] + ["cat", "/etc/hostname"] if probe else argv
    for u in users:
        t, r = u.run(probe_argv, cwd)
        if r.returncode != 0 or (probe and r.stdout != "container\n"):
            raise RuntimeError(f"{' '.join(probe_argv)} as {u.name}: {r.stdout.strip()!r} "
                               f"{r.stderr.strip()}")
