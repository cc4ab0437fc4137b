"""What a killed launch, keeper or build may leave behind, found precisely enough to tell one
test's leftovers from those of launches running beside it.

A container is known by the inode of its mount namespace (read while it was stopped at a phase)
and by its private image file: the FUSE server holds that file open, a root loop device names
it as backing file.  Each check returns what it found; ``wait_clean`` polls them all and says
how long the kernel took to let go (the figure docs/security.md quotes).
"""
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

STOP_AT_VAR = "HPCCONT_DEBUG_STOP_AT"


def proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def wait_for(predicate, seconds: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


def children(pid: int) -> list:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def mnt_ns(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/mnt")


class Launch:
    """``hpccont exec --debug`` started as ``user`` (None: the caller), stopped before the step
    ``stop_at`` when given (apply.py's HPCCONT_DEBUG_STOP_AT).  The Popen PID is the runtime:
    the entry point is a Python script, the command replaces it in place."""

    def __init__(self, hpccont, image, argv, user=None, stop_at=None, options=(), env=None,
                 cwd="/"):
        e = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        kw = {}
        if user is not None:
            e.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
            kw = dict(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        else:
            e.update(HOME=os.environ.get("HOME", "/root"), USER="root")
        if stop_at:
            e[STOP_AT_VAR] = stop_at
        e.update(env or {})
        self.image = str(image)
        self.proc = subprocess.Popen([str(hpccont), "exec", "--debug", *options, str(image),
                                      *argv], env=e, cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, **kw)
        self.pid = self.proc.pid
        self.ns = None
        if stop_at:
            wait_for(lambda: proc_state(self.pid) in ("T", "Z", "gone"), what=f"stop at {stop_at}")
            assert proc_state(self.pid) == "T", self.finish()
            self.ns = mnt_ns(self.pid)

    def running_command(self, name: str) -> None:
        """Wait until the command ``name`` runs in place of the runtime."""
        wait_for(lambda: comm(self.pid) == name or proc_state(self.pid) in ("Z", "gone"),
                 what=f"the command {name}")
        try:
            self.ns = mnt_ns(self.pid)
        except FileNotFoundError:
            # A quick command may have ended already (a zombie has no ns links): its mount
            # namespace went with it, and wait_clean checks what else could be left.
            self.ns = None

    def fuse_server(self) -> int:
        """The squashfuse child, once it has exec'd (the runtime may stop before it has)."""
        found = wait_for(lambda: [c for c in children(self.pid)
                                  if comm(c).startswith("squashfuse")], what="squashfuse")
        assert len(found) == 1, (found, [(c, comm(c)) for c in children(self.pid)])
        return found[0]

    def kill(self, pid=None) -> float:
        os.kill(pid or self.pid, signal.SIGKILL)
        return time.monotonic()

    def cont(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def finish(self, timeout: float = 60):
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err


# ---------------------------------------------------------------------------------------------
# leftovers

def ns_holders(ns: str) -> list:
    """Processes in mount namespace ``ns``, or holding it open (an nsfs descriptor)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{pid}/ns/mnt") == ns:
                found.append((int(pid), comm(int(pid)), "in"))
                continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == ns:
                    found.append((int(pid), comm(int(pid)), "fd"))
        except OSError:
            continue
    return found


def image_holders(image: str) -> list:
    """Live processes (not zombies) with ``image`` open or on their command line: its FUSE
    server, a page-cache reader, a keeper."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or proc_state(int(pid)) in ("Z", "X", "gone"):
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        if image in fds or (image in cmd and "squashfuse" in cmd):
            found.append((int(pid), comm(int(pid))))
    return found


def fuse_processes() -> list:
    """Every live squashfuse / fuse-overlayfs (pgrep's view; zombies excluded)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and comm(int(pid)).startswith(("squashfuse", "fuse-overlayfs")) \
                and proc_state(int(pid)) not in ("Z", "X", "gone"):
            found.append(int(pid))
    return sorted(found)


def loop_devices(image: str) -> list:
    """Loop devices whose backing file is ``image`` (root mode)."""
    found = []
    for dev in Path("/sys/block").glob("loop*"):
        try:
            if (dev / "loop" / "backing_file").read_text().strip() == image:
                found.append(dev.name)
        except OSError:
            continue
    return found


def host_mounts(*fragments) -> list:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if any(fr in line for fr in fragments)]


def tree(d) -> set:
    """Every path under ``d`` (empty when missing): state, cache and build directories."""
    d = Path(d)
    if not d.exists():
        return set()
    return {str(p.relative_to(d)) for p in d.rglob("*")}


def leftovers(image: str, ns: str | None) -> dict:
    found = {"mounts": host_mounts(image), "holders": image_holders(image),
             "loops": loop_devices(image)}
    if ns:
        found["namespace"] = ns_holders(ns)
    return {k: v for k, v in found.items() if v}


def wait_clean(image: str, ns: str | None, since: float, seconds: float = 10.0):
    """(seconds until nothing was left, or None, what is left then)."""
    deadline = since + seconds
    while True:
        left = leftovers(image, ns)
        if not left:
            return time.monotonic() - since, {}
        if time.monotonic() > deadline:
            return None, left
        time.sleep(0.002)


def kill_holders(image: str) -> None:
    for pid, _ in image_holders(image):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def snapshot(dirs) -> dict:
    return {d: tree(d) for d in dirs}


def new_files(before: dict, mine=lambda path: True) -> dict:
    """Paths under the snapshot's directories that were not there before (``mine``: those a
    concurrent test of the same user cannot have made)."""
    out = {}
    for d, old in before.items():
        added = {p for p in tree(d) - old if mine(p)}
        if added:
            out[d] = sorted(added)
    return out


# --- the users of the fault tests (in this module, not conftest: a test importing
# ``conftest`` at run time would get another suite's)

class Who:
    """A user of the fault tests: ``pw`` (None: root), its environment and its directories."""

    def __init__(self, pw, base: Path, extra_config: str = ""):
        self.pw = pw
        self.name = pw.pw_name if pw else "root"
        base.mkdir(mode=0o700)
        self.home = base
        if pw:
            os.chown(base, pw.pw_uid, pw.pw_gid)
        runtime, cache = base / "run", base / "cache"
        for d in (runtime, cache):
            d.mkdir(mode=0o700)
            if pw:
                os.chown(d, pw.pw_uid, pw.pw_gid)
        config = base / "hpccont.yaml"
        state = runtime / (f"hpccont-{pw.pw_uid}" if pw else "state")
        text = "runtime:\n" + ("" if pw else f"  state_dir: {state}\n") + extra_config
        config.write_text(text)
        config.chmod(0o644)
        self.env = {"XDG_RUNTIME_DIR": str(runtime), "XDG_CACHE_HOME": str(cache),
                    "HPCCONT_CONFIG": str(config)}
        self.dirs = [str(runtime), str(cache)]


def make_who(pw, fault_dir, tag, extra_config=""):
    top = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=fault_dir))
    top.chmod(0o755)
    return Who(pw, top / "home", extra_config)
