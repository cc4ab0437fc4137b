"""Named, long-running containers: ``hpccont instance start|run|list|stats|stop`` and
``instance://NAME``.

An instance is a joined container (see join.py) whose keeper is persistent: it stays until
``instance stop``, whatever its startscript or runscript does.  ``exec instance://NAME CMD``
joins it, so commands see the same mounts, /tmp tmpfs (with --contain) and processes' files.

Where things are kept:
- the registry: one JSON file per instance in the user's state directory (join.state_dir,
  node-local: /run/user/UID or /tmp), so that a shared home never shows another node's
  instances and a reboot forgets them;
- the logs: ``~/.local/share/hpccont/instances/logs/HOST/USER/NAME.{out,err}``, Apptainer's
  ``~/.apptainer/instances/logs/HOST/USER`` layout under hpccont's data directory, appended
  to at each start as Apptainer does.

An instance's processes, as this module counts them: the keeper (the PID shown), its
descendants (the FUSE servers, which may live in mount namespaces of their own), and the
*workload*: every other process in the keeper's mount namespace (the startscript or
runscript, ``exec instance://`` commands and their children).  ``stop`` signals the workload,
then ends the keeper, whose FUSE servers write back and leave with it.

Inside a batch job the keeper stays in the job's cgroup (the batch system kills it with the
job) and, under Slurm, also watches the job step's slurmstepd: should the keeper have escaped
the step's process tracking, it ends the instance itself once the step is gone.
"""
from __future__ import annotations

import json
import os
import re
import time

from ..errors import LaunchError, UsageError
from . import join

PREFIX = "instance://"
# Apptainer's defaults: SIGINT, then SIGKILL after 10 s
STOP_SIGNAL = "INT"
STOP_TIMEOUT_S = 10.0
KEEPER_GRACE_S = 10.0    # the keeper's FUSE servers write an ext3 overlay back before leaving
NAME_RE = re.compile(r"^[a-zA-Z0-9._-]+$")      # Apptainer's authorized characters
LOG_BASE = (".local", "share", "hpccont", "instances", "logs")
# Signal names Apptainer accepts besides the kernel's own (its signal.Convert)
SIGNAL_ALIASES = {"SIGIOT": "SIGABRT", "SIGCLD": "SIGCHLD", "SIGPOLL": "SIGIO"}


def check_name(name: str) -> str:
    if not NAME_RE.match(name or "") or name in (".", ".."):
        raise UsageError(f"{name!r} is not a valid instance name (letters, digits, '.', '_' "
                         "and '-')")
    return name


def registry_path(cfg: dict, name: str, state_dir: str | None = None) -> str:
    check_name(name)
    return os.path.join(state_dir or join.state_dir(cfg), f"instance-{name}.json")


def join_key(name: str) -> str:
    return f"instance:{name}"


def log_paths(name: str, home: str, user: str) -> dict:
    """{"out", "err"}: where the instance's stdout and stderr go."""
    d = os.path.join(home, *LOG_BASE, os.uname().nodename, user)
    return {"out": os.path.join(d, f"{check_name(name)}.out"),
            "err": os.path.join(d, f"{name}.err")}


def read(cfg: dict, name: str, state_dir: str | None = None, owner: int | None = None):
    """The registry entry of ``name``, or None.  Read without following a symbolic link, and
    only from a regular file of ``owner`` (root may read another user's registry)."""
    path = registry_path(cfg, name, state_dir)
    got = join.read_owned(path, owner)
    try:
        entry = json.loads(got[0]) if got else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("keeper"), int):
        return None
    entry["_ino"], entry["_dir"] = got[1].st_ino, os.path.dirname(path)
    return entry


def alive(entry: dict) -> bool:
    """Is the entry's keeper still that process (not a reused PID), not a zombie, and owned
    by the entry's user?"""
    try:
        pid = entry["keeper"]
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        if fields[19] != entry["keeper_start"] or fields[0] in ("Z", "X"):
            return False
        return os.stat(f"/proc/{pid}").st_uid == entry.get("uid", os.geteuid())
    except (OSError, KeyError, IndexError, TypeError):
        return False


def attach(req, cfg: dict):
    """``instance://NAME`` as an image: the instance's image, joined to its container."""
    name = req.image[len(PREFIX):]
    entry = read(cfg, name)
    if entry is None or not alive(entry):
        raise LaunchError(f"no running instance named {name!r} (see 'hpccont instance list')")
    req.image = entry["image"]
    req.join = join_key(name)
    req.fakeroot = req.fakeroot or bool(entry.get("fakeroot"))   # its namespace's ids
    req.env.update(instance_env(name))
    return req


def instance_env(name: str) -> dict:
    """What Apptainer sets in an instance's processes (the startscript, the runscript and
    exec instance://)."""
    return {"APPTAINER_INSTANCE": name, "SINGULARITY_INSTANCE": name}


def record(cfg: dict, name: str, image: str, keeper: int, logs: dict, job: str | None = None,
           fakeroot: bool = False) -> dict:
    import pwd
    uid = os.geteuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    entry = {"name": name, "image": image, "keeper": keeper,
             "keeper_start": join.start_time(keeper), "uid": uid, "user": user,
             "started": time.time(), "ip": "", "logs": logs, "job": job, "fakeroot": fakeroot}
    path = registry_path(cfg, name)
    with open(path + ".tmp", "w") as f:
        json.dump(entry, f)
    os.replace(path + ".tmp", path)
    return entry


def entries(cfg: dict, pattern: str = "*", uid: int | None = None,
            home: str | None = None) -> list:
    """Running instances whose names match the glob ``pattern``, by name.  Entries whose
    keeper is gone (stopped by the batch system, the node's processes killed) are removed,
    as Apptainer deletes its ghost instance files.  ``uid``: another user's (root only)."""
    import fnmatch
    mine = uid is None or uid == os.geteuid()
    dirs = [join.state_dir(cfg)] if mine else _user_dirs(uid, home)
    owner = os.geteuid() if mine else uid
    found = {}
    for d in dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for fn in names:
            if not (fn.startswith("instance-") and fn.endswith(".json")):
                continue
            name = fn[len("instance-"):-len(".json")]
            if not NAME_RE.match(name) or not fnmatch.fnmatchcase(name, pattern):
                continue
            entry = read(cfg, name, d, owner)
            if entry is None or name in found:
                continue
            if alive(entry):
                found[name] = entry
            elif mine:
                forget(cfg, entry)
    return [found[n] for n in sorted(found)]


def _user_dirs(uid: int, home: str | None) -> list:
    """Another user's state directories, each a real directory of theirs (no symbolic link)."""
    import stat
    out = []
    for d in join.user_state_dirs(uid, home):
        try:
            st = os.lstat(d)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == uid:
            out.append(d)
    return out


def forget(cfg: dict, entry: dict) -> None:
    """Remove ``entry``'s registry file, unless a new instance of that name replaced it.
    Only the user's own: root never unlinks through a directory another user controls (their
    next ``instance list`` drops it)."""
    if entry.get("uid", os.geteuid()) != os.geteuid():
        return
    path = registry_path(cfg, entry["name"], entry.get("_dir"))
    try:
        if os.lstat(path).st_ino == entry.get("_ino", -1):
            os.unlink(path)
    except OSError:
        pass


def find(cfg: dict, name: str, uid: int | None = None, home: str | None = None) -> list:
    """The running instances ``name`` (a glob) names; LaunchError when there is none."""
    found = entries(cfg, name, uid, home)
    if not found:
        raise LaunchError(f"no instance found with name {name!r}" if name != "*"
                          else "no instance found")
    return found


# -- processes ----------------------------------------------------------------------------

def _stat(pid: int) -> list | None:
    """/proc/PID/stat fields after the command name (state first), or None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def processes(entry: dict) -> dict:
    """{"keeper": PID, "helpers": [...], "workload": [...]}: the instance's live processes,
    only those of the entry's user (a registry file is the user's to write: root acting on it
    never signals anyone else's process)."""
    keeper = entry["keeper"]
    uid = entry.get("uid", os.geteuid())
    parents = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            fields = _stat(int(d))
            if fields and fields[0] not in ("Z", "X"):
                parents[int(d)] = int(fields[1])
    helpers, todo = [], [keeper]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        helpers += kids
        todo += kids
    try:
        members = join.members(keeper)
    except OSError:
        members = []
    # --pid: the keeper is PID 1 of its namespace, and its parent, which created that
    # namespace, waits outside it (in the same mount namespace) and ends with it
    if parents.get(keeper) in members:
        helpers.append(parents[keeper])
    skip = {keeper, *helpers}
    userns = _userns(keeper)
    if userns == _userns(os.getpid()):   # not a container's keeper: only the user's processes
        userns = None

    def ours(p):
        return _owner(p) == uid or (userns is not None and _userns(p) == userns)
    return {"keeper": keeper,
            "helpers": [p for p in helpers if ours(p)],
            "workload": [p for p in members if p not in skip and p in parents and ours(p)]}


def _owner(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _userns(pid: int) -> str | None:
    """The user namespace of ``pid``.  A --fakeroot instance's processes may run as the
    user's subordinate ids, in the keeper's user namespace, which the user owns (and may
    signal in)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/user")
    except OSError:
        return None


def parse_signal(text: str) -> int:
    """A signal by name (``TERM``, ``SIGTERM``, any case) or number, as Apptainer takes it."""
    import signal
    name = text.strip().upper()
    name = name if name.startswith("SIG") else "SIG" + name
    name = SIGNAL_ALIASES.get(name, name)
    sig = getattr(signal.Signals, name, None) if name.isidentifier() else None
    if isinstance(sig, signal.Signals):
        return int(sig)
    try:
        number = int(text.strip())
        return int(signal.Signals(number))
    except ValueError:
        raise UsageError(f"--signal {text!r}: not a signal name or number") from None


def stop(cfg: dict, entry: dict, sig: int, timeout: float, say=None) -> bool:
    """Send ``sig`` to the instance's workload; SIGKILL what is left after ``timeout``
    seconds; then end the keeper and its FUSE servers.  True when the workload had to be
    killed.  ``say(text)``: Apptainer's INFO messages."""
    import signal
    say = say or (lambda text: None)
    label = f"{entry['name']} instance of {entry['image']} (PID={entry['keeper']})"
    say(f"Stopping {label}")
    killed = False
    if alive(entry):
        procs = processes(entry)
        work = _with_start(procs["workload"])
        _signal_all(work, sig)
        if not _wait_gone(work, timeout):
            say(f"Killing {label} (Timeout)")
            _signal_all(work, signal.SIGKILL)
            killed = True
        _end_keeper(entry, procs)
    forget(cfg, entry)
    return killed


def _end_keeper(entry: dict, procs: dict) -> None:
    """SIGTERM the keeper (its FUSE servers get their death signal and write back), SIGKILL
    whatever is left after KEEPER_GRACE_S; every process that ever joined the namespace late
    goes too."""
    import signal
    keeper = _with_start([procs["keeper"]])
    helpers = _with_start(procs["helpers"])
    late = _with_start(processes(entry)["workload"]) if alive(entry) else {}
    _signal_all(late, signal.SIGKILL)
    _signal_all(keeper, signal.SIGTERM)
    if not _wait_gone({**keeper, **helpers, **late}, KEEPER_GRACE_S):
        _signal_all({**keeper, **helpers, **late}, signal.SIGKILL)
        _wait_gone({**keeper, **helpers, **late}, 2.0)


def _with_start(pids) -> dict:
    """{PID: start time}: a PID is signalled only while it is still the same process."""
    out = {}
    for p in pids:
        fields = _stat(p)
        if fields:
            out[p] = fields[19]
    return out


def _same(pid: int, start: str) -> bool:
    fields = _stat(pid)
    return bool(fields) and fields[19] == start and fields[0] not in ("Z", "X")


def _signal_all(procs: dict, sig: int) -> None:
    for p, start in procs.items():
        if _same(p, start):
            try:
                os.kill(p, sig)
            except (ProcessLookupError, PermissionError):
                pass


def _wait_gone(procs: dict, timeout: float) -> bool:
    """Wait until none of ``procs`` runs (a zombie counts as gone: PID 1 may reap slowly)."""
    deadline = time.monotonic() + timeout
    while True:
        if not any(_same(p, s) for p, s in procs.items()):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


# -- batch jobs ---------------------------------------------------------------------------

# The job step daemons whose death ends an instance started under them (comm names).
STEP_DAEMONS = ("slurmstepd",)


def job_daemon(environ) -> tuple:
    """(job id, PID of the nearest slurmstepd above us) inside a Slurm job, else (None, 0)."""
    job = environ.get("SLURM_JOB_ID")
    if not job:
        return None, 0
    pid = os.getppid()
    for _ in range(64):
        if pid <= 1:
            break
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            break
        if comm in STEP_DAEMONS:
            return job, pid
        fields = _stat(pid)
        pid = int(fields[1]) if fields else 0
    return job, 0
