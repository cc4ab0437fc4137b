"""Several tasks, one container: ``--join KEY``.

MPI ranks on one node must share a mount and user namespace: sibling user namespaces break
shared-memory and CMA/ptrace transports between them, and mounting the image once per task
wastes seconds at 64 tasks a node.  So the first task with a KEY builds the container in a
*keeper* process, and every task (the first one too) enters the keeper's namespaces with
setns() and then execs its own command exactly as a lone container would.

The keeper is double-forked so that it is nobody's child (no task ever reaps it by surprise),
but it stays in the caller's cgroup: the batch system still kills it with the job.  It lives
while any process other than itself and its FUSE server is inside its mount namespace, checked
once a second, and removes its state file when it goes.

Kernel rules that shape this:
- Unprivileged containers have two user namespaces (see apply.py): the outer one owns the mount
  namespace, the nested one gives the caller back their uid.  A joiner enters the outer one
  first (found from the keeper's nested one with the NS_GET_PARENT ioctl): it is owned by our
  uid, so setns gives every capability in it, which setns(CLONE_NEWNS) then needs.  From the
  outer namespace the nested one (its child, also owned by our uid) can be entered last.
- After setns(CLONE_NEWNS) the root and working directory are the namespace's root, which is
  the container root because the keeper ran pivot_root in it.
- A process with threads may not setns into a user namespace: this runs before any thread.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import time

from ..errors import LaunchError
from .plan_types import LaunchPlan

LINGER_CHECKS = 2          # consecutive empty checks before the keeper leaves
FIRST_JOIN_GRACE_S = 10.0  # a keeper nobody joined within this long leaves


def state_dir(cfg: dict[str, dict]) -> str:
    if os.geteuid() == 0:
        d = cfg["runtime"]["state_dir"]
    else:
        base = os.environ.get("XDG_RUNTIME_DIR")
        if not base or not os.path.isdir(base):
            base = "/tmp"
        d = os.path.join(base, f"hpccont-{os.getuid()}")
    os.makedirs(d, mode=0o700, exist_ok=True)
    st = os.stat(d)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise LaunchError(f"state directory {d} must belong to you and be private (mode 0700)")
    return d


def state_name(plan: LaunchPlan) -> str:
    digest = hashlib.sha256(f"{plan.join}\0{plan.image.path}".encode()).hexdigest()[:20]
    return f"join-{digest}"


def apply_joined(plan: LaunchPlan, cfg: dict[str, dict], persistent: bool = False) -> None:
    """Enter (creating if needed) the shared container for ``plan.join``, then exec.  No return.

    ``persistent``: a keeper created now stays until it is killed (``instance stop``) instead
    of leaving with its last guest."""
    from .apply import Step, execute
    d = state_dir(cfg)
    name = state_name(plan)
    step = Step()
    with open(os.path.join(d, name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pid = _live_keeper(os.path.join(d, name))
        if pid is None:
            pid = _start_keeper(plan, cfg, d, name, lock.fileno(), persistent)
        try:
            _enter(pid, plan)
        except OSError as e:
            raise LaunchError(f"cannot join container {plan.join!r} (keeper {pid}): "
                              f"{e.strerror}") from None
    try:
        os.chdir(plan.cwd)
    except OSError as e:
        raise LaunchError(f"working directory {plan.cwd} is not usable in the container: "
                          f"{e.strerror}") from None
    execute(plan, step)


def keeper_pid(plan: LaunchPlan, cfg: dict[str, dict]) -> int | None:
    """The live keeper of ``plan.join``'s container, if any."""
    return _live_keeper(os.path.join(state_dir(cfg), state_name(plan)))


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


def _live_keeper(path: str) -> int | None:
    """The keeper's PID if the state file names a live keeper of ours (not a reused PID)."""
    try:
        with open(path) as f:
            pid_s, start = f.read().split()
        pid = int(pid_s)
        if _start_time(pid) != start or os.stat(f"/proc/{pid}").st_uid != os.getuid():
            return None
        return pid
    except (OSError, ValueError):
        return None


def _start_time(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[19]


def _enter(pid: int, plan: LaunchPlan) -> None:
    from . import kernel as K
    mnt = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    if plan.mode != "rootless":
        K.setns(mnt, K.CLONE_NEWNS)
        os.close(mnt)
        return
    nested = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    outer = K.ioctl_int(nested, K.NS_GET_PARENT)
    try:
        K.setns(outer, K.CLONE_NEWUSER)
        K.setns(mnt, K.CLONE_NEWNS)
        K.setns(nested, K.CLONE_NEWUSER)
    finally:
        for fd in (outer, mnt, nested):
            os.close(fd)


def _start_keeper(plan: LaunchPlan, cfg: dict[str, dict], d: str, name: str, lock_fd: int,
                  persistent: bool) -> int:
    """Double-fork a keeper that builds the container; returns its PID once it is ready."""
    rfd, wfd = os.pipe()
    child = os.fork()
    if child == 0:
        # flock belongs to the open file description, which fork shares: the keeper must not
        # keep it, or every later task would wait for the keeper to exit.
        os.close(lock_fd)
        os.close(rfd)
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            _keeper(plan, cfg, d, name, wfd, persistent)
        finally:
            os._exit(1)
    os.close(wfd)
    os.waitpid(child, 0)
    with os.fdopen(rfd, "rb") as r:
        msg = r.read().decode(errors="replace")
    if not msg.startswith("ready "):
        raise LaunchError(msg.strip() or "container keeper failed to start")
    pid = int(msg.split()[1])
    with open(os.path.join(d, name + ".tmp"), "w") as f:
        f.write(f"{pid} {_start_time(pid)}\n")
    os.replace(os.path.join(d, name + ".tmp"), os.path.join(d, name))
    return pid


def _keeper(plan: LaunchPlan, cfg: dict[str, dict], d: str, name: str, wfd: int,
            persistent: bool) -> None:
    from .apply import Step, enter, setup
    # Keep no terminal or output pipe of the job open: srun waits for EOF on its pipes.
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    dir_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    step = Step()
    try:
        root = setup(plan, cfg, step)
        step("pivoting into the container root")
        plan_root = plan.cwd
        plan.cwd = "/"
        enter(root, plan, step)
        plan.cwd = plan_root
    except Exception as e:  # reported by the task that started us, as one line
        text = getattr(e, "strerror", None) or str(e)
        os.write(wfd, f"cannot start container ({step.name}): {text}".encode())
        os._exit(1)
    os.write(wfd, f"ready {os.getpid()}".encode())
    os.close(wfd)
    if persistent:
        while True:      # an instance: lives until stopped
            time.sleep(3600)
    _linger(dir_fd, name)


def _linger(dir_fd: int, name: str) -> None:
    me = os.getpid()
    ns = os.readlink("/proc/self/ns/mnt")
    started = time.monotonic()
    seen_guest = False
    empty = 0
    while True:
        time.sleep(1.0)
        guests = _guests(ns, me)
        seen_guest = seen_guest or guests
        if guests:
            empty = 0
        elif seen_guest or time.monotonic() - started > FIRST_JOIN_GRACE_S:
            empty += 1
            if empty >= LINGER_CHECKS:
                break
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass
    os._exit(0)


def _guests(ns: str, me: int) -> bool:
    """Is any process other than us and our own children (the FUSE server) in namespace ``ns``?"""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/mnt") != ns:
                continue
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid != me:
            return True
    return False
