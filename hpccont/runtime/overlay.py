"""Persistent overlays, applied: locks, layer mounts and the root overlay (plan: writable.py).

Called by ``apply.setup`` in the container's mount namespace, before pivot_root, when the plan
has overlays or a writable sandbox.  Everything mounted here lives in that namespace only.

Locks.  Each overlay is flock'ed through a descriptor that the FUSE servers inherit and a
holder process keeps (hold_locks): exclusive for the writable one, shared for ``:ro`` layers.
So two containers never write one overlay, any number read one, and a writer waits
(LOCK_WAIT_S, two seconds) for a container that is just ending: its fuse2fs still writes the
last blocks back while it holds the lock.  The command itself never holds them: a directory
descriptor is a way out of the container (see hold_locks).

ext3 without root.  fuse2fs reports the owners stored in the image (the user's real uid, as
Apptainer's ``overlay create`` writes them), but our user namespace maps only root, to the
caller: a file owned by the caller's real uid would show as the overflow uid, which the kernel
refuses to write.  So fuse2fs runs in a user namespace nested in ours that maps the caller's uid
to our root, with its own mount namespace (which that namespace owns) and CAP_SYS_ADMIN kept
ambient so that libfuse mounts directly.  The mount is cloned out of its namespace
(open_tree) and attached in ours (move_mount).  fuse2fs gets SIGTERM when the process that
becomes the command ends, and writes everything back before it exits.  Kernel overlayfs does
not take a FUSE upper layer: fuse-overlayfs serves the root then.  With --fakeroot and
subordinate ids, fuse2fs's namespace maps every id of ours back to its host id (we write
that map: a process may map only itself), so the image stores host ids as a kernel mount on
the host would; fuse2fs then runs with ``-o fakeroot`` (it lets only its uid 0 chown).

ext3 as root: a loop device (read-write unless :ro, autoclear) and a kernel ext3 mount.
"""
from __future__ import annotations

import fcntl
import os
import time

from ..errors import LaunchError
from . import kernel

LOCK_WAIT_S = 2.0
MOUNT_WAIT_S = 10.0
# fuse2fs and e2fsprogs' own messages are not the command's output
FUSE2FS = "fuse2fs"


def take_locks(overlays: list) -> list:
    """flock every overlay (see the module docstring); descriptors inherited by the command."""
    fds = []
    for o in overlays:
        fds.append(_lock(o))
    return fds


def hold_locks(fds: list) -> None:
    """Pass the lock descriptors to a holder process that ends with the command.

    A directory overlay's lock is a descriptor of a host directory.  Left to the command, it
    is a way out of the container: ``/proc/self/fd/N/..`` walks up the host's tree, which the
    container's root does not contain (seen: ``cat /proc/self/fd/3/../../../etc/hostname``
    printed the host's).  The holder is forked before the command's own user namespace and
    made non-dumpable, so the command cannot open ``/proc/HOLDER/fd/N`` either (the kernel's
    ptrace access check: a non-dumpable process is reachable only with CAP_SYS_PTRACE in the
    namespace it was exec'd in, the host's).  PR_SET_PDEATHSIG ends it, and releases the
    locks, when the process that becomes the command ends, however it ends.
    """
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            kernel.prctl(kernel.PR_SET_PDEATHSIG, kernel.SIGKILL)
            kernel.prctl(kernel.PR_SET_DUMPABLE, 0)
            if os.getppid() != parent:      # the launch died before prctl took effect
                os._exit(0)
            keep = set(fds)
            for name in os.listdir("/proc/self/fd"):
                if int(name) not in keep:
                    try:
                        os.close(int(name))     # not the command's output, nor its files
                    except OSError:
                        pass
            import _signal
            while True:
                _signal.pause()
        except BaseException:
            pass
        os._exit(0)
    for fd in fds:
        os.close(fd)


def _lock(o: dict) -> int:
    path = o["path"]
    flags = os.O_RDONLY | (os.O_DIRECTORY if o["kind"] == "dir" else 0)
    fd = os.open(path, flags | os.O_CLOEXEC)
    # fuse2fs, which writes an ext3 overlay back as it ends, keeps that one's lock; no program
    # gets a directory's (hold_locks says why), which only the holder keeps.
    os.set_inheritable(fd, o["kind"] != "dir")
    mode = fcntl.LOCK_SH if o["readonly"] else fcntl.LOCK_EX
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                what = "partition of " if o["offset"] else ""
                if o["readonly"]:
                    raise LaunchError(f"overlay {what}{path} is being written by another "
                                      "container; it can be shared only read-only") from None
                raise LaunchError(f"overlay {what}{path} is in use by another container: "
                                  "only one container may write to an overlay (add :ro to "
                                  "share it read-only)") from None
            time.sleep(0.05)


def build_root(plan, cfg: dict, stage: str, lower: str, root: str, system_program) -> bool:
    """Mount the overlays and the container root at ``root``; True when the root is
    persistently writable (then it is not made read-only at the end)."""
    if plan.writable and plan.image.kind == "sandbox":
        kernel.mount(lower, root, None, kernel.MS_BIND | kernel.MS_REC)
        return True
    rootless = plan.mode == "rootless"
    lowers, upper, work, upper_on_fuse = [], None, None, False
    for i, o in enumerate(plan.overlays):
        if o["kind"] == "dir":
            base, on_fuse = o["path"], False
        else:
            base = f"{stage}/overlay-{i}"
            os.mkdir(base, 0o755)
            on_fuse = _mount_ext3(o, base, plan, rootless, system_program)
        if o["readonly"]:
            layer = f"{base}/upper"
            lowers.append(layer if os.path.isdir(layer) else base)
            continue
        upper, work, upper_on_fuse = f"{base}/upper", f"{base}/work", on_fuse
        for d in (upper, work):
            if not os.path.isdir(d):
                try:
                    os.mkdir(d, 0o755)
                except OSError as e:
                    raise LaunchError(f"overlay {o['path']}: cannot create {d[len(base):]}: "
                                      f"{e.strerror}") from None
    lowers.append(lower)
    writable = upper is not None
    if not writable:
        upper, work = f"{stage}/upper", f"{stage}/work"
    lowerdir = ":".join(_escape(p) for p in lowers)
    options = f"lowerdir={lowerdir},upperdir={_escape(upper)},workdir={_escape(work)}"
    if upper_on_fuse or cfg["runtime"]["overlay"] != "kernel":
        from .apply import _serve_fuse
        _serve_fuse(root, "fuse-overlayfs", 0, 0, 0,
                    [system_program("fuse-overlayfs"), "-f", "-o", options])
        return writable
    flags = kernel.MS_NOSUID | kernel.MS_NODEV
    if rootless:
        try:      # user.overlay.* xattrs: what an unprivileged overlay can write on any upper
            kernel.mount("overlay", root, "overlay", flags, "userxattr," + options)
            return writable
        except OSError:
            pass
    kernel.mount("overlay", root, "overlay", flags, options)
    return writable


def _escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def _mount_ext3(o: dict, target: str, plan, rootless: bool, system_program) -> bool:
    """Mount the ext3 filesystem of overlay ``o`` at ``target``; True when through FUSE."""
    if not rootless:
        fd = os.open(o["path"], (os.O_RDONLY if o["readonly"] else os.O_RDWR) | os.O_CLOEXEC)
        try:
            dev, loop_fd = kernel.attach_loop(fd, o["offset"], o["size"] if o["offset"] else 0,
                                              readonly=o["readonly"])
        finally:
            os.close(fd)
        try:
            kernel.mount(dev, target, "ext3", kernel.MS_NOSUID | kernel.MS_NODEV
                         | (kernel.MS_RDONLY if o["readonly"] else 0))
        finally:
            os.close(loop_fd)
        return False
    _fuse2fs(o, target, plan, system_program(FUSE2FS))
    return True


def _stored_id_maps() -> tuple | None:
    """(uid_map, gid_map) for fuse2fs's namespace when our own has several ranges (--fakeroot
    with subordinate ids), else None (the single map the child writes itself: the caller's
    uid as our root).  Ids stored in the image are host ids, as a kernel mount on the host
    would store them: the inverse of our own map, each host id back to the container id it is
    here (so root's files are the caller's, and uid 5's are the fifth subordinate id's)."""
    out = []
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/self/{name}") as f:
            lines = [line.split() for line in f.read().splitlines() if line.strip()]
        out.append("\n".join(f"{outside} {inside} {count}" for inside, outside, count in lines))
    return tuple(out) if any("\n" in m for m in out) else None


def _write_child_maps(pid: int, maps: tuple, ready, mapped_w: int, o: dict) -> None:
    """Write the maps of fuse2fs's namespace from here, where we hold CAP_SETUID and
    CAP_SETGID over every id they name (a process may map only itself into its own)."""
    if ready.read(1) != b"u":
        return                                   # it failed: its message follows
    try:
        for name, text in zip(("uid_map", "gid_map"), maps):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(text)
    except OSError as e:
        os.write(mapped_w, b"0")
        raise LaunchError(f"overlay {o['path']}: cannot map fuse2fs's ids: {e.strerror}") \
            from None
    os.write(mapped_w, b"1")


def _fuse2fs(o: dict, target: str, plan, program: str) -> None:
    uid, gid = plan.identity.uid, plan.identity.gid      # the caller's ids outside
    opts = ["ro"] if o["readonly"] else []
    if o["offset"]:
        opts.append(f"offset={o['offset']}")
    maps = _stored_id_maps()
    if maps:
        # fuse2fs lets only its uid 0 chown, and we are the caller's uid there; its one
        # client is fuse-overlayfs, whose mount the kernel checks (default_permissions)
        opts.append("fakeroot")
    argv = [program, "-f", o["path"], target] + (["-o", ",".join(opts)] if opts else [])
    own_ns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    parent = os.getpid()
    ready_r, ready_w = os.pipe()
    mapped_r, mapped_w = os.pipe()      # several ranges: we write the child's maps
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(mapped_w)
            # our PID in the host's /proc, which is still ours here (--pid: fork's answer
            # is the new namespace's)
            os.write(ready_w, b"%d\n" % int(os.readlink("/proc/self")))
            kernel.prctl(kernel.PR_SET_PDEATHSIG, kernel.SIGTERM)
            if os.getppid() != parent:
                os._exit(1)
            kernel.unshare(kernel.CLONE_NEWUSER)
            if maps:
                os.write(ready_w, b"u")
                if os.read(mapped_r, 1) != b"1":
                    os._exit(1)
            else:
                try:   # needed for our own gid map (inherited as "deny" without --fakeroot)
                    with open("/proc/self/setgroups", "w") as f:
                        f.write("deny")
                except OSError:
                    pass
                with open("/proc/self/uid_map", "w") as f:
                    f.write(f"{uid} 0 1")
                with open("/proc/self/gid_map", "w") as f:
                    f.write(f"{gid} 0 1")
            os.close(mapped_r)
            kernel.unshare(kernel.CLONE_NEWNS)
            kernel.keep_capability_across_exec(kernel.CAP_SYS_ADMIN)
            devnull = os.open("/dev/null", os.O_RDWR)
            for std in (0, 1, 2):
                os.dup2(devnull, std)
            os.write(ready_w, b"1")
            os.close(ready_w)
            os.execv(program, argv)
        except BaseException as e:
            try:
                os.write(ready_w, f"0{getattr(e, 'strerror', None) or e}".encode())
            except OSError:
                pass
        os._exit(127)
    os.close(ready_w)
    os.close(mapped_r)
    with os.fdopen(ready_r, "rb") as r:
        line = r.readline()
        proc = int(line) if line.strip().isdigit() else pid     # its /proc entry
        if maps:
            _write_child_maps(proc, maps, r, mapped_w, o)
        os.close(mapped_w)
        msg = r.read().decode(errors="replace")
    if not msg.startswith("1"):
        raise LaunchError(f"overlay {o['path']}: cannot start fuse2fs: {msg[1:] or 'failed'}")
    deadline = time.monotonic() + MOUNT_WAIT_S
    needle = f" {target} "
    while True:
        try:
            with open(f"/proc/{proc}/mountinfo") as f:
                if needle in f.read():
                    break
        except OSError:
            pass
        done, status = os.waitpid(pid, os.WNOHANG)
        if done or time.monotonic() > deadline:
            raise LaunchError(f"overlay {o['path']}: fuse2fs could not mount it (is it an "
                              "ext3 image? run e2fsck on it)")
        time.sleep(0.005)
    theirs = os.open(f"/proc/{proc}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        kernel.setns(theirs, kernel.CLONE_NEWNS)
        try:
            tree = kernel.open_tree(target, kernel.OPEN_TREE_CLONE | kernel.OPEN_TREE_CLOEXEC)
        finally:
            kernel.setns(own_ns, kernel.CLONE_NEWNS)
        try:
            kernel.move_mount(tree, target)
        finally:
            os.close(tree)
    finally:
        os.close(theirs)
        os.close(own_ns)
