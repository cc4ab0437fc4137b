"""Several tasks, one container: ``--join KEY``.

MPI ranks on one node must share a mount and user namespace: sibling user namespaces break
shared-memory and CMA/ptrace transports between them, and mounting the image once per task
wastes seconds at 64 tasks a node.  So the first task with a KEY builds the container in a
*keeper* process, and every task (the first one too) enters the keeper's namespaces with
setns() and then execs its own command exactly as a lone container would.

The keeper is double-forked so that it is nobody's child (no task ever reaps it by surprise),
but it stays in the caller's cgroup: the batch system still kills it with the job.  Every task
holds a shared flock on a ``.guests`` file through its exec (the descriptor is inherited by the
command), and the keeper waits for an exclusive lock on it: the kernel wakes it the moment the
last task ends, with no polling.  It then confirms that no process other than itself and its
FUSE server is left in its mount namespace (a command may have closed the descriptor; then it
checks again every second), waits LINGER_S for tasks of the same step that start late (ranks
of one job are not started at the same instant), and removes its state and leaves.

Locks, always taken in this order: ``.lock`` (exclusive, held while a task finds or starts the
keeper and enters it), then ``.guests`` (shared by tasks).  The keeper holds ``.guests``
exclusively and only *tries* ``.lock``, so a task entering at that moment never deadlocks.

Kernel rules that shape this:
- Unprivileged containers have two user namespaces (see apply.py): the outer one owns the mount
  namespace, the nested one gives the caller back their uid.  A joiner enters the outer one
  first (found from the keeper's nested one with the NS_GET_PARENT ioctl): it is owned by our
  uid, so setns gives every capability in it, which setns(CLONE_NEWNS) then needs.  From the
  outer namespace the nested one (its child, also owned by our uid) can be entered last.
- After setns(CLONE_NEWNS) the root and working directory are the namespace's root, which is
  the container root because the keeper ran pivot_root in it.
- A process with threads may not setns into a user namespace: this runs before any thread.
- A keeper with a PID namespace (--pid) is its PID 1.  setns(CLONE_NEWPID) moves only the
  children of the caller into it, so a joiner forks after entering and waits outside; it
  must join while it holds the capabilities of the namespace's owner (the outer one).
"""
from __future__ import annotations

import fcntl
import os
import stat
import time

from ..digest import text_sha256
from ..errors import LaunchError
from .plan_types import LaunchPlan

RECHECK_S = 1.0            # poll interval once a guest has dropped its lock but still runs
LINGER_S = 1.0             # an empty container waits this long for late tasks of its step


def state_dir(cfg: dict[str, dict]) -> str:
    """The caller's private directory for keeper state and locks, which no other user can
    pre-empt.

    Root: ``runtime.state_dir`` (refused unless a real root-owned directory others cannot
    write).  Others: ``$XDG_RUNTIME_DIR/hpccont-UID`` when that runtime directory is really
    theirs, else ``/tmp/hpccont-UID``.  Anyone can create that name in /tmp first; a directory
    there that is not ours, private and real (not a symbolic link) is never used: the state
    then goes to ``/tmp/hpccont-UID-TOKEN``, whose TOKEN is a random name kept in the user's
    cache directory, so that every task of the user on the node finds the same place and no
    other user can guess it in advance."""
    if os.geteuid() == 0:
        d = cfg["runtime"]["state_dir"]
        os.makedirs(os.path.dirname(d.rstrip("/")) or "/", mode=0o755, exist_ok=True)
        if _private_dir(d) is None:
            raise LaunchError(f"state directory {d} must be a directory of root's that no one "
                              "else can write (runtime.state_dir)")
        return d
    uid = os.getuid()
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and base.startswith("/") and _owned_private(base):
        d = _private_dir(os.path.join(base, f"hpccont-{uid}"))
        if d:
            return d
    d = _private_dir(f"/tmp/hpccont-{uid}")
    return d or _fallback_state_dir(uid)


def user_state_dirs(uid: int, home: str | None) -> list[str]:
    """Where ``state_dir`` may have put user ``uid``'s state (for cleanup from the root side,
    which does not have the user's environment): the runtime directory, /tmp and the fallback
    named by the token in the user's default cache directory."""
    dirs = [f"/run/user/{uid}/hpccont-{uid}", f"/tmp/hpccont-{uid}"]
    if home:
        token = _read_token(os.path.join(home, ".cache", "hpccont", "state-token"), uid)
        if token:
            dirs.append(f"/tmp/hpccont-{uid}-{token}")
    return dirs


def _owned_private(path: str) -> bool:
    """Is ``path`` a real directory (no symbolic link) of ours that no one else can write?"""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _private_dir(path: str) -> str | None:
    """``path``, created mode 0700 if missing; None when it is someone else's, a symbolic link
    or not a directory.  A directory of ours that is too open is made 0700 through a
    descriptor (opened without following links, checked with fstat)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            return None
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o700)
        return path
    except OSError:
        return None
    finally:
        os.close(fd)


def _fallback_state_dir(uid: int) -> str:
    from .. import cache
    token_file = os.path.join(cache.cache_dir(), "state-token")
    for _ in range(3):
        token = _read_token(token_file)
        if token:
            d = _private_dir(f"/tmp/hpccont-{uid}-{token}")
            if d:
                return d
        _new_token(token_file, replace=bool(token))   # none yet, or its directory pre-empted
    raise LaunchError(f"/tmp/hpccont-{uid} belongs to another user and no private state "
                      f"directory could be made (is {cache.cache_dir()} writable?); set "
                      "XDG_RUNTIME_DIR to a private directory of yours")


def read_owned(path: str, owner: int | None = None, limit: int = 1 << 20,
               private: bool = False) -> tuple[bytes, os.stat_result] | None:
    """(the first ``limit`` bytes, its stat) of a regular file of ``owner`` (default: us),
    opened without following a link or blocking on a FIFO; None otherwise (``private``: also
    None when group or others may read it).  For state files another user could plant."""
    owner = os.geteuid() if owner is None else owner
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != owner or not stat.S_ISREG(st.st_mode) or (private and st.st_mode & 0o077):
            return None
        return os.read(fd, limit), st
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_token(path: str, owner: int | None = None) -> str | None:
    got = read_owned(path, owner, 64, private=True)
    token = got[0].decode("ascii", "replace").strip() if got else ""
    return token if len(token) == 32 and all(c in "0123456789abcdef" for c in token) else None


def _new_token(path: str, replace: bool) -> None:
    """Write a fresh random token; concurrent tasks agree on the first one written (link
    fails on an existing file) unless ``replace``."""
    tmp = f"{path}.{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(16).hex() + "\n")
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            os.unlink(tmp)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def state_name(plan: LaunchPlan) -> str:
    digest = text_sha256(f"{plan.join}\0{plan.image.path}")[:20]
    return f"join-{digest}"


def apply_joined(plan: LaunchPlan, cfg: dict[str, dict], persistent: bool = False,
                 linger_s: float = LINGER_S, watch_pid: int = 0, then=None) -> None:
    """Enter (creating if needed) the shared container for ``plan.join``, then exec.  No return.

    ``persistent``: a keeper created now stays until it is killed (``instance stop``) instead
    of leaving with its last guest; with ``watch_pid`` (an instance's slurmstepd) it ends, and
    kills what is left in its container, once that process is gone.  Otherwise it stays
    ``linger_s`` after its last guest, less once ``watch_pid`` (a session leader) is gone
    (shared mounts, runtime/share.py).
    ``then(plan, step, keeper_pid, state_dir_fd, name)`` execs in place of ``execute``."""
    from .apply import Step, execute
    d = state_dir(cfg)
    name = state_name(plan)
    step = Step()
    lock = _locked(os.path.join(d, name + ".lock"))
    try:
        # Inherited through exec on purpose: the command holds the container while it runs.
        guests = os.open(os.path.join(d, name + ".guests"), os.O_RDONLY | os.O_CREAT, 0o600)
        fcntl.flock(guests, fcntl.LOCK_SH)
        os.set_inheritable(guests, True)
        pid, _ = _ensure_locked(plan, cfg, d, name, (lock, guests), persistent, watch_pid,
                                linger_s)
        dir_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if then else -1
        try:
            joined_pid = enter_keeper(pid, plan)
        except OSError as e:
            raise LaunchError(f"cannot join container {plan.join!r} (keeper {pid}): "
                              f"{e.strerror}") from None
    finally:
        os.close(lock)
    if joined_pid:
        in_its_pid_namespace()
    try:
        os.chdir(plan.cwd)
    except OSError as e:
        raise LaunchError(f"working directory {plan.cwd} is not usable in the container: "
                          f"{e.strerror}") from None
    if then is not None:
        then(plan, step, pid, dir_fd, name)
    execute(plan, step)


def ensure_keeper(plan: LaunchPlan, cfg: dict[str, dict], persistent: bool = True,
                  watch_pid: int = 0, capture=None) -> tuple[int, bool]:
    """The keeper of ``plan.join``'s container, started now if none is alive, without entering it.

    Returns (keeper PID, whether the image has /.singularity.d/env/*.sh scripts and a /bin/sh
    to run them: then the command goes through ``env_script``).  Used where something other than
    this process enters the container later (the SPANK plugin's tasks).  ``watch_pid``: a
    persistent keeper also leaves when that process (slurmstepd) is gone, so that a crashed
    step cannot leave a container behind.  ``capture(plan, cfg, root)``: called in a keeper
    started now, once its container is set up and before the pivot (the Slurm step template
    records the build there)."""
    d = state_dir(cfg)
    name = state_name(plan)
    lock = _locked(os.path.join(d, name + ".lock"))
    try:
        return _ensure_locked(plan, cfg, d, name, (lock,), persistent, watch_pid,
                              capture=capture)
    finally:
        os.close(lock)


def _ensure_locked(plan: LaunchPlan, cfg: dict[str, dict], d: str, name: str, fds: tuple,
                   persistent: bool, watch_pid: int = 0,
                   linger_s: float = LINGER_S, capture=None) -> tuple[int, bool]:
    """Under ``.lock``: the live keeper, or a new one."""
    found = _live_keeper(os.path.join(d, name))
    if found is not None:
        return found
    return _start_keeper(plan, cfg, d, name, fds, persistent, watch_pid, linger_s, capture)


def _locked(path: str) -> int:
    """An exclusive flock on ``path``, re-opened if the keeper unlinked it while we waited."""
    while True:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def keeper_pid(plan: LaunchPlan, cfg: dict[str, dict]) -> int | None:
    """The live keeper of ``plan.join``'s container, if any."""
    found = _live_keeper(os.path.join(state_dir(cfg), state_name(plan)))
    return found[0] if found else None


def members(pid: int) -> list:
    """PIDs in the mount namespace of process ``pid`` (the keeper included)."""
    ns = os.readlink(f"/proc/{pid}/ns/mnt")
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/mnt") == ns:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def _live_keeper(path: str) -> tuple[int, bool] | None:
    """(PID, env scripts) if the state file names a live keeper of ours (not a reused PID)."""
    try:
        with open(path) as f:
            fields = f.read().split()
        pid, start = int(fields[0]), fields[1]
        if start_time(pid) != start or os.stat(f"/proc/{pid}").st_uid != os.getuid():
            return None
        if _state(pid) in ("Z", "X"):        # killed, not yet reaped: its namespaces are gone
            return None
        return pid, fields[2:3] == ["env"]
    except (OSError, ValueError, IndexError):
        return None


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def start_time(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[19]


def enter_keeper(pid: int, plan: LaunchPlan) -> bool:
    """Enter the keeper's namespaces; True when that includes its PID namespace (--pid),
    which only our children will be in (in_its_pid_namespace)."""
    from . import kernel
    mnt = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    if plan.mode != "rootless":
        pidns = _other_pid_namespace(pid)
        kernel.setns(mnt, kernel.CLONE_NEWNS)
        os.close(mnt)
        if pidns >= 0:
            kernel.setns(pidns, kernel.CLONE_NEWPID)
            os.close(pidns)
        return pidns >= 0
    nested = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    pidns = _other_pid_namespace(pid)
    if plan.fakeroot:
        # --fakeroot: one user namespace (no nested map back to the caller), ours, so setns
        # gives every capability in it; the caller is root there.
        try:
            kernel.setns(nested, kernel.CLONE_NEWUSER)
            kernel.setns(mnt, kernel.CLONE_NEWNS)
            if pidns >= 0:
                kernel.setns(pidns, kernel.CLONE_NEWPID)
        finally:
            for fd in (nested, mnt, pidns):
                if fd >= 0:
                    os.close(fd)
        return pidns >= 0
    outer = kernel.ioctl_int(nested, kernel.NS_GET_PARENT)
    try:
        kernel.setns(outer, kernel.CLONE_NEWUSER)
        kernel.setns(mnt, kernel.CLONE_NEWNS)
        if pidns >= 0:      # owned by the outer namespace: joined while we hold its capabilities
            kernel.setns(pidns, kernel.CLONE_NEWPID)
        kernel.setns(nested, kernel.CLONE_NEWUSER)
    finally:
        for fd in (outer, mnt, nested, pidns):
            if fd >= 0:
                os.close(fd)
    return pidns >= 0


def _other_pid_namespace(pid: int) -> int:
    """A descriptor of the keeper's PID namespace when it is not ours (--pid), else -1."""
    try:
        if os.readlink(f"/proc/{pid}/ns/pid") == os.readlink("/proc/self/ns/pid"):
            return -1
        return os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def in_its_pid_namespace() -> None:
    """After setns(CLONE_NEWPID) only children are in the namespace: fork one to go on with
    the launch; this process stays outside, passes signals on and exits as it does (as
    apply._become_pid_one does for a new namespace)."""
    from .apply import continue_in_child
    continue_in_child()


def _start_keeper(plan: LaunchPlan, cfg: dict[str, dict], d: str, name: str, fds: tuple,
                  persistent: bool, watch_pid: int = 0,
                  linger_s: float = LINGER_S, capture=None) -> tuple[int, bool]:
    """Double-fork a keeper that builds the container; (its PID, env scripts) once it is ready."""
    rfd, wfd = os.pipe()
    child = os.fork()
    if child == 0:
        # flock belongs to the open file description, which fork shares: the keeper must not
        # keep the task's locks, or it would wait for itself.
        for fd in fds:
            os.close(fd)
        os.close(rfd)
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            _keeper(plan, cfg, d, name, wfd, persistent, watch_pid, linger_s, capture)
        finally:
            os._exit(1)
    os.close(wfd)
    os.waitpid(child, 0)
    with os.fdopen(rfd, "rb") as r:
        # one line: a --pid keeper's outer half (apply._become_pid_one) keeps the pipe open
        msg = r.readline().decode(errors="replace")
    if not msg.startswith("ready "):
        raise LaunchError(msg.strip() or "container keeper failed to start")
    pid = int(msg.split()[1])
    scripts = msg.split()[2:3] == ["env"]
    with open(os.path.join(d, name + ".tmp"), "w") as f:
        f.write(f"{pid} {start_time(pid)} {'env' if scripts else 'plain'}\n")
    os.replace(os.path.join(d, name + ".tmp"), os.path.join(d, name))
    sweep_dead(d, name)
    return pid, scripts


def sweep_dead(d: str, mine: str) -> None:
    """Remove the state of keepers that died without cleaning up (kill -9, a job's end killing
    its cgroup, a node crash): their state file, ``.lock``, ``.guests``, ``.tmp`` and recipes.
    Run when a keeper starts, so the files of dead keepers never pile up in the state
    directory.  A name is only removed while its ``.lock`` is ours and its ``.guests`` free
    (taken without waiting: a task entering or a guest still running keeps it), as the keeper
    itself removes its state."""
    try:
        names = {n.split(".", 1)[0] for n in os.listdir(d) if n.startswith("join-")}
    except OSError:
        return
    names.discard(mine)
    dir_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in sorted(names):
            _sweep_one(d, dir_fd, name)
    finally:
        os.close(dir_fd)


def _sweep_one(d: str, dir_fd: int, name: str) -> None:
    held = []
    try:
        for suffix in (".lock", ".guests"):
            try:
                fd = os.open(name + suffix, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=dir_fd)
            except FileNotFoundError:
                continue
            held.append(fd)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _live_keeper(os.path.join(d, name)) is not None:
            return
        dead = _recorded_pid(dir_fd, name)
        for suffix in ("", ".tmp", ".guests", ".lock"):
            try:
                os.unlink(name + suffix, dir_fd=dir_fd)
            except OSError:
                pass
        if dead:
            remove_recipes(dir_fd, dead)
    except OSError:          # BlockingIOError: in use; anything else: leave it for later
        return
    finally:
        for fd in held:
            os.close(fd)


def _recorded_pid(dir_fd: int, name: str) -> int:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return 0
    try:
        return int(os.read(fd, 200).split()[0])
    except (OSError, ValueError, IndexError):
        return 0
    finally:
        os.close(fd)


def _keeper(plan: LaunchPlan, cfg: dict[str, dict], d: str, name: str, wfd: int,
            persistent: bool, watch_pid: int = 0, linger_s: float = LINGER_S,
            capture=None) -> None:
    from .apply import Step, _handle_fd, enter, env_scripts, setup
    from .prefetch import finish
    # Keep no terminal, output pipe or launcher socket of the job open: srun and mpirun wait
    # for EOF on their pipes, and a PMI socket held by the keeper outlives the rank.
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    # ... but keep the image file that was verified (signatures.require): the mount reads
    # that open file, /proc/self/fd/N, not the path.
    _close_all_but({wfd, *_handle_fd(plan.image)})
    dir_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    # The process served, as found from here: inside a PID namespace its PID means nothing.
    watched = start_time_or_none(watch_pid) if watch_pid and persistent else None
    watch_fd = _proc_dir(watch_pid) if watched else -1
    step = Step()
    try:
        root, reader = setup(plan, cfg, step)
        if capture is not None:
            capture(plan, cfg, root)
        me = int(os.readlink("/proc/self"))     # our PID on the host (--pid: not 1)
        step("pivoting into the container root")
        plan_root = plan.cwd
        plan.cwd = "/"
        enter(root, plan, step)
        plan.cwd = plan_root
    except Exception as e:  # reported by the task that started us, as one line
        text = getattr(e, "strerror", None) or str(e)
        os.write(wfd, f"cannot start container ({step.name}): {text}".encode())
        os._exit(1)
    # Seen from inside: has the image env scripts (and a shell for them)?  Slurm's prepare then
    # evaluates them once for all the step's tasks.
    scripts = bool(env_scripts(plan.env_dirs)) and os.path.exists("/bin/sh")
    finish(reader)     # the tasks about to enter then find their program cached
    os.write(wfd, f"ready {me} {'env' if scripts else 'plain'}\n".encode())
    os.close(wfd)
    if persistent:       # an instance or a Slurm step: lives until stopped ...
        _persist(dir_fd, name, watched, watch_fd)
    _linger(dir_fd, name, linger_s, watch_pid)


def _persist(dir_fd: int, name: str, watched: str | None, watch_fd: int) -> None:
    """A persistent keeper's life: until SIGTERM (instance stop) or, when ``watched``, the
    end of the process ``watch_fd`` (its /proc directory on the host) names.  As PID 1 of a
    PID namespace (--pid) it also reaps the orphans of its container."""
    import _signal

    def stopped(signum, frame):       # instance stop: leave no state behind
        _remove_state(dir_fd, name)
        _end_children()
        os._exit(0)
    _signal.signal(_signal.SIGTERM, stopped)
    if os.getpid() == 1:
        _signal.signal(_signal.SIGCHLD, lambda signum, frame: _reap())
    while True:          # ... or until the process it serves is gone
        time.sleep(1.0 if watched else 3600)
        if watched and _start_time_at(watch_fd) != watched:
            _remove_state(dir_fd, name)
            _kill_guests(os.getpid())      # nothing it served may outlive it
            os._exit(0)


def _proc_dir(pid: int) -> int:
    try:
        return os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return -1


def _start_time_at(proc_fd: int) -> str | None:
    """The start time of the process whose /proc directory ``proc_fd`` is (None once gone:
    the directory of an ended process reads ESRCH, even if its PID is reused)."""
    try:
        fd = os.open("stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
        try:
            return os.read(fd, 4096).decode().rsplit(")", 1)[1].split()[19]
        finally:
            os.close(fd)
    except (OSError, IndexError):
        return None


def _reap() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def _end_children(wait_s: float = 10.0) -> None:
    """SIGTERM our children (the FUSE servers: fuse2fs writes an ext3 overlay back) and wait
    for them: as PID 1 of a PID namespace, our exit would SIGKILL them."""
    me = os.getpid()
    kids = [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == me]
    for pid in kids:
        try:
            os.kill(pid, 15)
        except OSError:
            pass
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        _reap()
        if not any(os.path.exists(f"/proc/{k}") for k in kids):
            return
        time.sleep(0.02)


def _kill_guests(me: int) -> None:
    """SIGKILL every other process in our mount namespace (the FUSE servers, our children,
    get their death signal when we exit)."""
    for pid in members(me):
        if pid != me and _parent(pid) != me:
            try:
                os.kill(pid, 9)
            except OSError:
                pass


def _close_all_but(keep: set) -> None:
    """Close every descriptor from 3 up except those in ``keep``."""
    start = 3
    for fd in sorted(keep):
        if fd >= start:
            os.closerange(start, fd)
            start = fd + 1
    os.closerange(start, os.sysconf("SC_OPEN_MAX"))


def _linger(dir_fd: int, name: str, linger_s: float = LINGER_S, watch_pid: int = 0) -> None:
    """Leave once no guest is left for ``linger_s`` (LINGER_S once ``watch_pid`` is gone)."""
    me = os.getpid()
    watched = start_time_or_none(watch_pid) if watch_pid else None
    guests = os.open(name + ".guests", os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    lock = os.open(name + ".lock", os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    empty_since = None
    while True:
        fcntl.flock(guests, fcntl.LOCK_EX)          # returns when no task holds it shared
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:                      # a task is entering: let it take its share
            fcntl.flock(guests, fcntl.LOCK_UN)
            time.sleep(0.01)
            continue
        if _guests(me):
            empty_since, wait = None, RECHECK_S
        else:
            empty_since = empty_since or time.monotonic()
            idle = time.monotonic() - empty_since
            if watched and start_time_or_none(watch_pid) != watched:
                linger_s = min(linger_s, LINGER_S)       # the session (or job) is over
            if idle >= linger_s:
                break
            # empty: stay a moment for tasks of the same step starting late, then check
            # twice a second for the rest of a long linger
            wait = 0.05 if idle < LINGER_S else 0.5
        fcntl.flock(lock, fcntl.LOCK_UN)
        fcntl.flock(guests, fcntl.LOCK_UN)
        time.sleep(wait)
    _remove_state(dir_fd, name)                      # while holding both locks
    os._exit(0)


def _remove_state(dir_fd: int, name: str) -> None:
    for suffix in ("", ".guests", ".lock"):
        try:
            os.unlink(name + suffix, dir_fd=dir_fd)
        except OSError:
            pass
    remove_recipes(dir_fd, os.getpid())


def remove_recipes(dir_fd: int, keeper: int) -> None:
    """The exec fast path's recipes (``fast-*``, runtime/share.py) that name ``keeper``."""
    mine = b"p%d" % keeper
    try:
        names = [n for n in os.listdir(dir_fd) if n.startswith("fast-")]
    except OSError:
        return
    for n in names:
        try:
            fd = os.open(n, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                data = os.read(fd, 1 << 20)
            finally:
                os.close(fd)
            head, _, rest = data.partition(b"\n")
            fields = rest[int(head.split()[1]):].split(b"\0")
            if mine in fields:
                os.unlink(n, dir_fd=dir_fd)
        except (OSError, ValueError, IndexError):
            continue


def start_time_or_none(pid: int) -> str | None:
    try:
        return start_time(pid)
    except (OSError, IndexError):
        return None


def _guests(me: int) -> bool:
    """Is any process other than us and our own children (the FUSE server) in our namespace?"""
    for pid in members(me):
        if pid != me and _parent(pid) not in (me, None):
            return True
    return False


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None