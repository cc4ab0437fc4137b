"""Execute a LaunchPlan: the only code in hpccont that changes kernel state.

Everything this module runs after pivot_root is imported before it, at the top: once the host's
tree is gone, so is its Python library (an import would fail, or find the image's files).

The sequence, and why it is in this order:

1. Namespaces.  Unprivileged: a new user namespace plus a mount namespace, with the caller
   mapped to root (uid 0 -> caller's uid, gid 0 -> caller's gid).  Root inside is what lets the
   mount work below create mount points in the image's root-owned directories: the image's
   uid 0 files are owned by a *mapped* uid, so CAP_DAC_OVERRIDE applies to them (with the
   caller mapped to itself instead, they would belong to the unmapped overflow uid, and no
   capability in the namespace could write next to them).  Once the root is finished, a second
   user namespace nested in the first maps the caller's uid back onto that root (step 7), so
   the command runs as the same uid and gid as outside.  Root: a mount namespace only.
2. ``/`` is made recursively private first.  Without it, mount events would propagate between
   our namespace and the host's (systemd makes ``/`` shared), and a container's mounts could
   appear on the host.
3. A private tmpfs over the packaged ``session`` directory is the staging area: the image
   mount, the overlay's upper and work directories, generated /etc/passwd and /etc/group.
   Being inside our mount namespace it vanishes with it: nothing to clean up, however we end.
4. The image: unprivileged, we open /dev/fuse and mount the FUSE filesystem ourselves (we hold
   CAP_SYS_ADMIN in the namespace), then start squashfuse on ``/dev/fd/N`` (libfuse's
   "already mounted" convention), so squashfuse itself needs no privilege.  The kernel queues
   requests until squashfuse answers, so no readiness polling is needed.  squashfuse gets
   PR_SET_PDEATHSIG: when the command (which this process becomes) ends, it is killed, the
   namespace has no process left and every mount in it is gone.  squashfuse_ll also gets the
   caching adapter in its LD_PRELOAD (image_server_cache; docs/runtime.md says why).  Root: a
   read-only autoclear loop device and a kernel squashfs mount; the loop device frees itself
   with the last mount.
5. An overlay with the image as lower layer and the staging tmpfs as upper layer: bind targets
   that the read-only image lacks (``-B /scratch``) are created in the upper layer without
   touching the image.  Unless ``--writable-tmpfs`` was asked for, the overlay is remounted
   read-only once the mount points exist.
6. Mounts from the plan, each resolved inside the new root so that ``..`` or a symlink in the
   image can never point a mount at the host: the mount point is found by a descriptor walk
   (rootpath.open_mountpoint) and mounted through ``/proc/self/fd/N``, so that a tree that
   changes meanwhile (a sandbox its owner writes while root launches it) cannot move it.
   Binds are recursive (a user namespace refuses a non-recursive bind of a tree with
   submounts: EINVAL) and then remounted nosuid (and ro), keeping the flags the kernel locked
   on the source mount, or the remount fails with EPERM.
7. pivot_root(".", ".") then a lazy unmount of the old root: the host's tree is no longer
   reachable from the container.  chroot alone could be escaped by a process with
   CAP_SYS_CHROOT in the namespace.  Then, unprivileged, the nested user namespace that gives
   the caller back their own uid and gid (the parent namespace's root maps to the caller).
8. PR_SET_NO_NEW_PRIVS, then execve.  The command keeps this process's PID, parent and cgroup:
   the batch system still sees, accounts and signals it.
"""
from __future__ import annotations

import errno
import os
import sys

from ..errors import BindError, CommandNotFound, CommandNotExecutable, LaunchError
from . import kernel
from . import pending   # at the top: released inside the container, where the package may not be
from . import prefetch
from .envscripts import env_scripts, image_environment, shell_prefix
from .identity import group_content, passwd_content
from ..rootpath import open_mountpoint, read_in_root
from .mounts import resolve_in_root
from .plan_types import LaunchPlan, Mount

SESSION_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "data", "session")
FUSE_SERVERS = {"squashfuse_ll": "squashfuse_ll", "squashfuse": "squashfuse"}
# launcher/fusecache.c, installed beside the entry point: preloaded into a low-level image
# server, it negotiates the kernel caching squashfuse leaves off (no-open, cached listings and
# links), and its launcher/inflate.c decodes gzip blocks with libdeflate.  Only squashfuse_ll:
# the high-level server's table is libfuse's own.
FUSE_CACHE = "hpccont-fusecache.so"
CACHED_SERVERS = ("squashfuse_ll",)
# Looked up here rather than through the user's PATH: faster, and a user's PATH must not pick
# the program that serves every file of the container.
SYSTEM_BIN = ("/usr/bin", "/usr/local/bin", "/bin", "/usr/sbin", "/sbin")


class Step:
    """Names the step in progress, so that a failure becomes one line saying what failed.

    With --debug each step also prints the time since the interpreter started (see
    since_process_start): the breakdown docs/performance.md quotes.
    """

    def __init__(self, debug: bool = False):
        self.name = "start"
        self.debug = debug

    def __call__(self, name: str) -> "Step":
        if self.debug:
            os.write(2, f"hpccont: [{since_process_start():6.1f} ms] {name}\n".encode())
            _stop_if_asked(name)
        self.name = name
        return self


# With --debug, HPCCONT_DEBUG_STOP_AT=STEP makes the launch stop itself (SIGSTOP) just before
# the step whose name starts with STEP: the fault tests (tests/faults/) kill it, or its FUSE
# server, at an exact phase.  Only --debug reads it, so a plain launch pays nothing; a process
# can only stop itself, which its owner could do anyway.
STOP_AT_VAR = "HPCCONT_DEBUG_STOP_AT"
SIGSTOP = 19     # the same on every architecture kernel.py knows; no signal import here


def _stop_if_asked(name: str) -> None:
    at = os.environ.get(STOP_AT_VAR)
    if at and name.startswith(at):
        os.kill(os.getpid(), SIGSTOP)


_origin: list = []


def since_process_start() -> float:
    """Milliseconds since the interpreter started, estimated on first use as now minus the CPU
    time used so far: until then the process only computes (interpreter start, imports,
    planning), so the two agree to a fraction of a millisecond, where the start time in
    /proc/self/stat counts in 10 ms clock ticks."""
    import time
    if not _origin:
        _origin.append(time.monotonic() - time.process_time())
    return (time.monotonic() - _origin[0]) * 1000


def apply(plan: LaunchPlan, cfg: dict[str, dict], *, debug: bool = False,
          recorder=None) -> None:
    """Set up the container described by ``plan`` and exec its command.  Never returns.

    ``recorder`` (runtime/cold.py) writes what was done down as a recipe, for launcher/fast.c
    to repeat the same launch without Python."""
    step = Step(debug)
    try:
        root, reader = setup(plan, cfg, step)
        if recorder is not None:
            recorder.capture(plan, cfg, root)
        enter(root, plan, step)
    except OSError as e:
        raise LaunchError(f"cannot start container ({step.name}): "
                          f"{e.strerror or e}") from None
    if recorder is None:
        execute(plan, step, reader)
    path, argv, env = exec_target(plan, step, reader)
    recorder.write(plan, argv, env)
    exec_command(plan, step, path, argv, env, reader)


def setup(plan: LaunchPlan, cfg: dict[str, dict], step: Step) -> tuple[str, int]:
    """Steps 1-6: returns the host path of the finished container root (in our namespace) and
    the pid of the child warming the image's page cache (0: none), which the caller waits for
    before the exec (prefetch.finish)."""
    ident = plan.identity
    if plan.cgroup:
        step("joining the cgroup for --cpus/--memory")
        _join_cgroup(plan)
    step("creating namespaces")
    extra = _extra_namespaces(plan)
    if plan.mode == "rootless" and plan.fakeroot:
        from .fakeroot import unshare_mapped     # subordinate ids when the user has them
        unshare_mapped(kernel.CLONE_NEWUSER | kernel.CLONE_NEWNS | extra)
    elif plan.mode == "rootless":
        kernel.unshare(kernel.CLONE_NEWUSER | kernel.CLONE_NEWNS | extra)
        _write_id_maps(f"0 {ident.uid} 1", f"0 {ident.gid} 1", deny_setgroups=True)
    else:
        kernel.unshare(kernel.CLONE_NEWNS | extra)
    if plan.hostname:
        step(f"setting the host name {plan.hostname}")
        kernel.sethostname(plan.hostname)
    if plan.net:
        step("bringing up the loopback interface")
        _loopback_up()
    if plan.pid:
        step("starting PID 1 of the new PID namespace")
        _become_pid_one()
    step("making / private")
    kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)
    step("mounting the staging tmpfs")
    stage = cfg["runtime"].get("session_dir") or SESSION_DIR
    kernel.mount("hpccont", stage, "tmpfs", kernel.MS_NOSUID | kernel.MS_NODEV,
            f"mode=0755,size={cfg['runtime']['tmp_size']}")
    for d in ("lower", "upper", "work", "root", "files"):
        os.mkdir(f"{stage}/{d}", 0o755)
    locks = []
    if plan.overlays:
        step("locking the overlays")
        from . import overlay
        locks = overlay.take_locks(plan.overlays)   # inherited by the FUSE servers below
    step("mounting the image")
    lower = _mount_image(plan, cfg, f"{stage}/lower")
    reader = 0
    if plan.image.kind != "sandbox" and cfg["runtime"].get("prefetch", True):
        step("starting the page-cache reader")
        reader = prefetch.start(lower, prefetch.targets(plan.argv[0] if plan.argv else "",
                                                        plan.env.get("PATH", "")))
    step("mounting the overlay")
    root = f"{stage}/root"
    persistent = False
    if plan.overlays or plan.writable:
        from . import overlay
        persistent = overlay.build_root(plan, cfg, stage, lower, root, _system_program)
    else:
        _mount_overlay(cfg, root, lower, stage)
    for m in plan.mounts:
        step(f"mounting {m.target}")
        _apply_mount(m, root, lower, f"{stage}/files", plan)
    if locks and plan.mode == "root":
        # Root's container is root's: a descriptor adds nothing to what it can do (the host's
        # disks are in /dev), and a holder process would keep the namespace, its mounts and
        # loop devices a moment past the command.  The command holds them, as it always did.
        for fd in locks:
            os.set_inheritable(fd, True)
    elif locks:
        step("handing the overlay locks to their holder")
        from . import overlay
        overlay.hold_locks(locks)
    if not plan.writable_tmpfs and not persistent:
        step("making the root read-only")
        kernel.mount(None, root, None, kernel.MS_REMOUNT | kernel.MS_BIND | kernel.MS_RDONLY | kernel.MS_NOSUID | kernel.MS_NODEV)
    return root, reader


def _extra_namespaces(plan: LaunchPlan) -> int:
    """--pid, --ipc, --uts (--hostname), --net: namespaces created with the mount namespace
    (and owned by the new user namespace, so that root in it may set them up)."""
    flags = 0
    for wanted, flag in ((plan.pid, kernel.CLONE_NEWPID), (plan.ipc, kernel.CLONE_NEWIPC),
                         (plan.uts or bool(plan.hostname), kernel.CLONE_NEWUTS),
                         (plan.net, kernel.CLONE_NEWNET)):
        if wanted:
            flags |= flag
    return flags


def _join_cgroup(plan: LaunchPlan) -> None:
    from .limits import join_cgroup
    try:
        join_cgroup(plan.cgroup)
    except OSError as e:
        if plan.message_level > -3:
            os.write(2, f"hpccont: warning: --cpus/--memory not applied: {plan.cgroup['path']}: "
                        f"{e.strerror}\n".encode())


# <linux/sockios.h>, <net/if.h>
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def _loopback_up() -> None:
    """A new network namespace has only ``lo``, down: bring it up (``--network none``)."""
    import fcntl
    import struct
    import _socket
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        req = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, struct.pack("16sh14x", b"lo", flags | IFF_UP))
    finally:
        sock.close()


# Signals passed on to the container (the batch system's, the terminal's): PID 1 of a PID
# namespace ignores every signal it has no handler for.
FORWARDED_SIGNALS = (1, 2, 3, 10, 12, 14, 15, 18, 28)   # HUP INT QUIT USR1 USR2 ALRM TERM CONT WINCH


def _forward_signals(pid: int) -> None:
    import _signal

    def forward(signum, frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    for sig in FORWARDED_SIGNALS:
        _signal.signal(sig, forward)


def _wait_and_exit_as(pid: int, reap_all: bool = False) -> None:
    """Wait for ``pid`` (reaping any other child meanwhile when ``reap_all``: an init), then
    end this process as it ended: its exit status, or 128 + the signal that killed it."""
    pending.release()           # launches waiting for this one must not wait for its command
    while True:
        try:
            done, status = os.waitpid(-1 if reap_all else pid, 0)
        except ChildProcessError:
            os._exit(255)
        if done == pid:
            break
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if os.getpid() != 1:     # outside: die of the same signal, as the shell would see it
            import _signal
            _signal.signal(sig, _signal.SIG_DFL)
            os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status))


def _become_pid_one() -> None:
    """After unshare(CLONE_NEWPID) the next child is PID 1 of the new namespace: fork it.  The
    child continues the launch; this process stays outside as the one the batch system sees,
    passes signals on and exits as the container does.  The child dies with it
    (PR_SET_PDEATHSIG), and with PID 1 the whole namespace."""
    import _signal  # noqa: F401  (loaded now: the init needs it after pivot_root)
    continue_in_child()


def continue_in_child() -> None:
    """Fork; the child returns and goes on with the launch (dying with this process), this
    process stays outside, passes signals on and exits as the child does.  After unshare or
    setns of CLONE_NEWPID only children are in the PID namespace (here and join.py)."""
    child = os.fork()
    if child == 0:
        kernel.prctl(kernel.PR_SET_PDEATHSIG, kernel.SIGKILL)
        return
    _forward_signals(child)
    _wait_and_exit_as(child)


def _write_id_maps(uid_map: str, gid_map: str, deny_setgroups: bool) -> None:
    # setgroups must be denied before a process without CAP_SETGID in the parent namespace
    # may write gid_map; the nested namespace inherits the denial.
    items = [("uid_map", uid_map), ("gid_map", gid_map)]
    if deny_setgroups:
        items.insert(0, ("setgroups", "deny"))
    for name, text in items:
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def become_user(plan: LaunchPlan) -> None:
    """Rootless: nested user namespace mapping the caller's uid/gid onto the outer root."""
    if plan.mode != "rootless" or plan.fakeroot:
        return
    uid, gid = plan.identity.uid, plan.identity.gid
    kernel.unshare(kernel.CLONE_NEWUSER)
    _write_id_maps(f"{uid} 0 1", f"{gid} 0 1", deny_setgroups=False)


def _overlay_escape(path: str) -> str:
    # overlayfs splits lowerdir on ':' and options on ','
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def _mount_image(plan: LaunchPlan, cfg: dict[str, dict], target: str) -> str:
    img = plan.image
    if img.kind == "sandbox":
        return img.path
    if plan.mode == "root":
        return _mount_loop(img, target)
    # user_id/group_id are read in the mounting namespace, where the caller is root.
    return _mount_fuse(img, cfg, target, 0, 0)


def _mount_loop(img, target: str) -> str:
    fd = os.open(img.handle or img.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dev, loop_fd = kernel.attach_loop(fd, img.offset, img.size)
    finally:
        os.close(fd)
    try:
        kernel.mount(dev, target, "squashfs", kernel.MS_RDONLY | kernel.MS_NOSUID | kernel.MS_NODEV)
    finally:
        os.close(loop_fd)   # autoclear: the device now lives exactly as long as the mount
    return target


def _image_server(cfg) -> str:
    return _system_program(FUSE_SERVERS[cfg["runtime"]["squashfuse"]])


def beside_entry_point(name: str) -> str:
    """``name`` in this entry point's directory, where ``make install`` puts the C parts (the
    launcher, the caching adapter)."""
    return os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), name)


def installed_fuse_cache() -> str:
    """The caching adapter beside this entry point (``make install`` builds it there, and
    ``hpccont slurm install-plugin`` copies it beside the plugin's launcher), or ""."""
    path = beside_entry_point(FUSE_CACHE)
    return path if os.path.isfile(path) else ""


def image_server_cache(cfg) -> str:
    """The caching adapter to preload into the image's FUSE server, or "" for none."""
    if not cfg["runtime"].get("fuse_cache", True) or \
            cfg["runtime"]["squashfuse"] not in CACHED_SERVERS:
        return ""
    return installed_fuse_cache()


def _mount_fuse(img, cfg, target: str, uid: int, gid: int) -> str:
    server = _image_server(cfg)
    preload = image_server_cache(cfg)
    _serve_fuse(target, "squashfuse", kernel.MS_RDONLY, uid, gid,
                [server, "-f", "-o", f"offset={img.offset}", img.handle or img.path],
                keep=_handle_fd(img), preload=preload)
    return target


def _handle_fd(img) -> tuple:
    """The descriptor behind ``img.handle`` (/proc/self/fd/N), which the server must inherit."""
    return (int(img.handle.rsplit("/", 1)[1]),) if img.handle else ()


def _serve_fuse(target: str, name: str, flags: int, uid: int, gid: int, argv: list,
                keep: tuple = (), preload: str = "") -> None:
    """Mount a FUSE filesystem at ``target`` ourselves and start ``argv`` to serve it.

    We hold CAP_SYS_ADMIN in the namespace, so we open /dev/fuse and mount; the server gets the
    descriptor as its mount point ``/dev/fd/N`` (libfuse's "already mounted" convention) and
    needs no privilege.  PR_SET_PDEATHSIG ends the server with the process that becomes the
    command; the kernel queues requests until the server answers, so nothing waits here.
    ``preload`` (image_server_cache) goes into the server's LD_PRELOAD, and only its.
    """
    fd = os.open("/dev/fuse", os.O_RDWR)   # inheritable on purpose: the server reads it
    os.set_inheritable(fd, True)
    kernel.mount(name, target, f"fuse.{name}", flags | kernel.MS_NOSUID | kernel.MS_NODEV,
            f"fd={fd},rootmode=40000,user_id={uid},group_id={gid},default_permissions")
    argv = argv + [f"/dev/fd/{fd}"]
    parent = os.getpid()
    pid = os.fork()
    if pid:
        SERVERS.append((pid, name))
    if pid == 0:  # child: becomes the FUSE server
        try:
            kernel.prctl(kernel.PR_SET_PDEATHSIG, kernel.SIGKILL)
            if os.getppid() != parent:      # parent died before prctl took effect
                os._exit(1)
            for kept in keep:               # e.g. the verified image, as /proc/self/fd/N
                os.set_inheritable(kept, True)
            # Its own chatter (fuse-overlayfs reports ignored mount options) is not the
            # command's output; a failure shows as an I/O error inside.
            devnull = os.open("/dev/null", os.O_RDWR)
            for std in (0, 1, 2):
                os.dup2(devnull, std)
            if preload:
                os.environ["LD_PRELOAD"] = " ".join(
                    filter(None, (preload, os.environ.get("LD_PRELOAD", ""))))
            os.execv(argv[0], argv)
        except BaseException:
            pass
        os._exit(127)
    os.close(fd)


# The FUSE servers this process started, (pid, name): their parent until the exec.
SERVERS: list = []
SERVER_WHAT = {"squashfuse": "the image's FUSE server"}


def check_servers() -> None:
    """Just before the exec: a server already gone (killed, out of memory) fails the launch
    with one line.  Once it is gone the kernel answers what it has cached (the caching adapter
    lets lookups and opens stay there) and nothing else, so the command would start and then
    fault, or crash, on its first page not yet read."""
    for pid, name in SERVERS:
        try:
            done = os.waitpid(pid, os.WNOHANG)[0] == pid
        except ChildProcessError:   # another process's child now (a keeper's): not ours to say
            done = False
        if done:
            raise LaunchError(f"cannot start container ({SERVER_WHAT.get(name, name)} "
                              f"exited): {os.strerror(errno.ENOTCONN)}")


def _mount_overlay(cfg, root: str, lower: str, stage: str) -> None:
    """Kernel overlayfs (unprivileged since Linux 5.11), or fuse-overlayfs for older kernels."""
    options = _overlay_options(lower, stage)
    if cfg["runtime"]["overlay"] == "kernel":
        kernel.mount("overlay", root, "overlay", kernel.MS_NOSUID | kernel.MS_NODEV, options)
        return
    server = _system_program("fuse-overlayfs")
    # Root inside our namespace serves it: uid 0 is mapped, as for the image mount.
    _serve_fuse(root, "fuse-overlayfs", 0, 0, 0, [server, "-f", "-o", options])


def _overlay_options(lower: str, stage: str) -> str:
    return f"lowerdir={_overlay_escape(lower)},upperdir={stage}/upper,workdir={stage}/work"


def _system_program(name: str) -> str:
    for d in SYSTEM_BIN:
        path = f"{d}/{name}"
        if os.access(path, os.X_OK):
            return path
    raise LaunchError(f"{name} is not installed (needed to mount images without root)")


def _apply_mount(m: Mount, root: str, lower: str, files: str, plan: LaunchPlan) -> None:
    identity = m.kind in ("passwd", "group")
    if identity:
        m = _identity_file(m, lower, files, plan)
    elif m.kind == "file":
        m = _generated_file(m, files)
    if m.kind in ("bind", "dev") and m.optional and not os.path.exists(m.source):
        return
    # The image's /etc/passwd may be a link climbing out: covered where the container's own
    # lookup (clamped at its root) finds it.  Other destinations that climb are refused.
    # Mounts go onto the descriptor of the mount point (rootpath.open_mountpoint says why).
    rootless = plan.mode == "rootless"
    if m.kind == "symlink":
        _make_symlink(root, m, files, rootless)
        return
    is_dir = m.kind in ("proc", "tmpfs", "fs") or os.path.isdir(m.source)
    fd = _mountpoint(root, m.target, is_dir, files, identity, rootless)
    at = f"/proc/self/fd/{fd}"
    try:
        if m.kind == "proc":
            kernel.mount("proc", at, "proc", kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC)
            return
        if m.kind == "tmpfs":
            kernel.mount("tmpfs", at, "tmpfs", kernel.MS_NOSUID | kernel.MS_NODEV,
                         m.options or "mode=0755")
            return
        if m.kind == "fs":
            # devpts and mqueue may be mounted by root of a user namespace (FS_USERNS_MOUNT);
            # mqueue shows the queues of the IPC namespace we are in, a private one (--ipc).
            kernel.mount(m.source, at, m.source, kernel.MS_NOSUID | kernel.MS_NOEXEC
                         | (kernel.MS_NODEV if m.source != "devpts" else 0), m.options or None)
            return
        kernel.mount(m.source, at, None, kernel.MS_BIND | kernel.MS_REC)
    finally:
        os.close(fd)
    # The remount needs the new mount's root, which the descriptor (of the directory below
    # it) is not: the same walk again, which now ends on the mount, checked to be the source.
    fd = _mountpoint(root, m.target, is_dir, files, identity, rootless)
    at = f"/proc/self/fd/{fd}"
    try:
        here, source = os.fstat(fd), os.stat(m.source)
        if (here.st_dev, here.st_ino) != (source.st_dev, source.st_ino):
            raise LaunchError(f"mount point {m.target} changed while it was being mounted")
        flags = kernel.MS_REMOUNT | kernel.MS_BIND | kernel.MS_NOSUID | kernel.locked_flags(at)
        if m.readonly:
            flags |= kernel.MS_RDONLY
        kernel.mount(None, at, None, flags)
    finally:
        os.close(fd)


def _make_symlink(root: str, m: Mount, stash: str, rootless: bool) -> None:
    """A link the plan adds (minimal /dev: fd, stdin...), made in its directory's descriptor,
    unless something is there already."""
    parent, name = os.path.split(m.target.rstrip("/"))
    fd = _mountpoint(root, parent or "/", True, stash, False, rootless)
    try:
        os.symlink(m.source, name, dir_fd=fd)
    except FileExistsError:
        pass
    finally:
        os.close(fd)


def _mountpoint(root: str, target: str, is_dir: bool, stash: str, clamp: bool,
                rootless: bool) -> int:
    """O_PATH descriptor of the mount point of container path ``target``, made if missing."""
    def refuse(message: str) -> BindError:
        return BindError(f"bind destination {message}")
    try:
        return open_mountpoint(root, target, is_dir, escape="clamp" if clamp else "refuse",
                               error=refuse)
    except PermissionError:
        if not rootless:
            raise
        # Rootless, in a sandbox owned by a uid the namespace does not map: no entry can be
        # added there, and _make_mountpoint lays a tmpfs over the directory instead, by path:
        # only the sandbox's owner, not the caller, could change that tree meanwhile, and what
        # runs here has the caller's rights only.  (Root never takes this way.)
        path = resolve_in_root(root, target, clamp=clamp)
        _make_mountpoint(path, is_dir, stash)
        return os.open(path, os.O_PATH | os.O_CLOEXEC)


def _identity_file(m: Mount, lower: str, files: str, plan: LaunchPlan) -> Mount:
    # The image's own file, looked up inside the image: a symbolic link such as
    # /etc/passwd -> /etc/shadow must not make us (root, possibly) read a host file.
    raw = read_in_root(lower, m.target)
    current = raw.decode("utf-8", "replace") if raw else ""
    make = passwd_content if m.kind == "passwd" else group_content
    path = f"{files}/{m.kind}"
    with open(path, "w") as f:
        f.write(make(current, plan.identity))
    return Mount(kind="bind", target=m.target, source=path, readonly=True, why=m.why)


def _generated_file(m: Mount, files: str) -> Mount:
    """Plan-supplied content bound read-only at the target; a script (#!) is made executable."""
    path = f"{files}/file-{len(os.listdir(files))}"
    content = m.content or ""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                 0o755 if content.startswith("#!") else 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    return Mount(kind="bind", target=m.target, source=path, readonly=True, why=m.why)


def _make_mountpoint(path: str, is_dir: bool, stash: str) -> None:
    if os.path.lexists(path):
        return
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        _make_mountpoint(parent, True, stash)
    try:
        _create(path, is_dir)
    except PermissionError:
        # The image directory belongs to a uid our namespace cannot map (a root-owned sandbox
        # used without root): no capability lets us add an entry.  Lay a tmpfs over the
        # directory that shows the same entries (bound back from a stash), plus the new one.
        _underlay(parent, stash)
        _create(path, is_dir)


def _create(path: str, is_dir: bool) -> None:
    if is_dir:
        os.mkdir(path, 0o755)
    else:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def _underlay(directory: str, stash: str) -> None:
    keep = f"{stash}/underlay-{len(os.listdir(stash))}"
    os.mkdir(keep)
    kernel.mount(directory, keep, None, kernel.MS_BIND | kernel.MS_REC)
    st = os.stat(directory)
    kernel.mount("tmpfs", directory, "tmpfs", kernel.MS_NOSUID | kernel.MS_NODEV,
            f"mode={st.st_mode & 0o7777:o}")
    for name in os.listdir(keep):
        src, dst = f"{keep}/{name}", f"{directory}/{name}"
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
            continue
        _create(dst, os.path.isdir(src))
        kernel.mount(src, dst, None, kernel.MS_BIND | kernel.MS_REC)


def enter(root: str, plan: LaunchPlan, step: Step) -> None:
    """Step 7: make ``root`` the root of our mount namespace and drop the host's tree."""
    step("pivoting into the container root")
    os.chdir(root)
    kernel.pivot_root(".", ".")
    kernel.umount2(".", kernel.MNT_DETACH)
    os.chdir("/")
    step("mapping back to the caller's uid and gid")
    become_user(plan)
    step(f"changing to working directory {plan.cwd}")
    try:
        os.chdir(plan.cwd)
    except OSError as e:
        raise LaunchError(f"working directory {plan.cwd} is not usable in the container: "
                          f"{e.strerror}") from None


def execute(plan: LaunchPlan, step: Step, reader: int = 0) -> None:
    """Step 8: exec the command, in the environment the image's env scripts make.

    The scripts are evaluated here, in Python (envscripts.py), when they keep to what such
    scripts use; otherwise /bin/sh sources them and execs the command, as Apptainer's
    layout expects.  ``reader`` (the page-cache reader started by setup) is waited for first:
    the exec then finds the program in the cache, and no child of ours is left to the command.
    """
    path, argv, env = exec_target(plan, step, reader)
    exec_command(plan, step, path, argv, env, reader)


def exec_target(plan: LaunchPlan, step: Step, reader: int = 0) -> tuple[str, list, dict]:
    """What ``execute`` execs, decided inside the container: (program path, argv, environment).
    runtime/share.py records it as a recipe for the exec fast path."""
    argv = _action_fallback(plan, list(plan.argv), reader)
    env = dict(plan.env)
    if argv[0] == "/bin/sh" and len(argv) == 1 and os.path.exists("/bin/bash"):
        argv[0] = "/bin/bash"
    if argv[0] in ("/bin/sh", "/bin/bash"):
        env.setdefault("PS1", "Hpccont> ")
    path = None
    if env_scripts(plan.env_dirs):
        step("evaluating the image's environment scripts")
        evaluated = image_environment(plan, env)
        if evaluated is not None:
            env = evaluated
            _dedupe_library_path(env)
        elif os.path.exists("/bin/sh"):
            argv = shell_prefix(plan) + argv
            path = "/bin/sh"
    if path is None:
        path = _which(argv[0], env.get("PATH", ""))
    return path, argv, env


def exec_command(plan: LaunchPlan, step: Step, path: str, argv: list, env: dict,
                 reader: int = 0) -> None:
    """Exec ``exec_target``'s answer.  Never returns."""
    if reader:
        step("waiting for the page-cache reader")
        prefetch.finish(reader)
    check_servers()
    if plan.umask is not None:
        os.umask(plan.umask)
    step(f"exec {path}")
    restore_signals()
    try:
        kernel.prctl(kernel.PR_SET_NO_NEW_PRIVS, 1)
        if plan.pid and plan.init:
            _start_init()
        try:
            os.execve(path, argv, env)
        except OSError as e:
            if e.errno != errno.ENOEXEC or not os.path.exists("/bin/sh"):
                raise
            # a script without "#!": run by the shell, as execvp and the shell's exec do
            os.execve("/bin/sh", ["/bin/sh", path] + argv[1:], env)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise CommandNotFound(f"{plan.argv[0]}: command not found in the container") from None
        raise CommandNotExecutable(f"{plan.argv[0]}: cannot execute: {e.strerror}") from None


# The interpreter ignores SIGPIPE and SIGXFSZ (it reports them as exceptions), and an ignored
# signal stays ignored across execve: without this, `hpccont exec IMG yes | head` would never
# end its `yes` by SIGPIPE.  The C paths (launcher/, spank_plugin/) never change them.
INTERPRETER_IGNORED = (13, 25)      # SIGPIPE, SIGXFSZ


def restore_signals() -> None:
    """Give the command the default dispositions Python changed, as subprocess does."""
    import _signal
    for sig in INTERPRETER_IGNORED:
        _signal.signal(sig, _signal.SIG_DFL)


# A FUSE server killed (OOM, kill -9) leaves its mount answering ENOTCONN; a truncated image
# answers EIO: not "command not found", which would send the user looking in the wrong place.
IMAGE_GONE = (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO)

RUNSCRIPT = "/.singularity.d/runscript"
TESTSCRIPT = "/.singularity.d/test"


def _action_fallback(plan: LaunchPlan, argv: list, reader: int) -> list:
    """Apptainer's action script: ``run`` without a runscript runs /apptainer, else /bin/sh
    with the arguments; ``test`` without a test script exits 0."""
    def usable(p: str) -> bool:
        return os.path.isfile(p) and os.access(p, os.X_OK)
    if plan.action == "run" and argv[0] == RUNSCRIPT and not usable(RUNSCRIPT):
        if usable("/apptainer"):
            return ["/apptainer"] + argv[1:]
        if usable("/bin/sh"):
            _info(plan, "No runscript found in container, executing /bin/sh")
            return ["/bin/sh"] + argv[1:]
    if plan.action == "test" and argv[0] == TESTSCRIPT and not usable(TESTSCRIPT):
        _info(plan, "No test script found in container, exiting")
        if reader:
            prefetch.finish(reader)
        os._exit(0)
    return argv


def _info(plan: LaunchPlan, text: str) -> None:
    if plan.message_level >= 1:
        os.write(2, f"hpccont: {text}\n".encode())


def _dedupe_library_path(env: dict) -> None:
    """Each LD_LIBRARY_PATH entry once (the launch and the image's 99-base.sh both add
    /.singularity.d/libs; Apptainer's action script clears the variable first)."""
    ld = env.get("LD_LIBRARY_PATH")
    if ld:
        env["LD_LIBRARY_PATH"] = ":".join(dict.fromkeys(p for p in ld.split(":") if p))


def _start_init() -> None:
    """--pid without --no-init: this process (PID 1) stays as a small init, Apptainer's
    appinit: the command runs as its child, signals are passed on, orphans are reaped, and
    PID 1 exits as the command does.  Returns in the child, which execs the command."""
    child = os.fork()
    if child == 0:
        return
    _forward_signals(child)
    _wait_and_exit_as(child, reap_all=True)


def _which(cmd: str, path: str) -> str:
    if "/" in cmd:
        return cmd
    for d in path.split(":"):
        candidate = f"{d or '.'}/{cmd}"
        try:
            mode = os.stat(candidate).st_mode
        except OSError as e:
            if e.errno in IMAGE_GONE:
                raise LaunchError(f"{cmd}: cannot search the container: {e.strerror} "
                                  "(the image's FUSE server has died, or the image file "
                                  "changed under it)") from None
            continue
        if mode & 0o170000 == 0o100000 and os.access(candidate, os.X_OK):
            return candidate
    # (Apptainer's wording in parentheses: clients such as cwltool look for it)
    raise CommandNotFound(f"{cmd}: command not found in the container "
                          "(executable file not found in $PATH)")
