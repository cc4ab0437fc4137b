"""A root-like environment for builds: user namespaces, and scripts run chrooted in a rootfs.

Non-root builds run in a user namespace where the user is root (``--fakeroot``), so that
%post can install packages and files keep the owners they have in the image.  The map gives the
user's /etc/subuid and /etc/subgid ranges to ids 1..N through the setuid helpers
newuidmap/newgidmap when both exist (apt, dpkg and friends chown to system users); otherwise only
the user is mapped, to 0, which is enough for most scripts.  Root builds skip the user namespace.

Section scripts run in a child that has its own mount namespace (nothing it mounts is seen by
the host, and everything goes away when it exits), with /proc, /sys and /dev bound recursively
(inside a user namespace a non-recursive bind of a tree with submounts fails with EINVAL, and a
new proc mount would need a PID namespace), the host's resolv.conf and hosts for package
downloads, then chroot into the rootfs.
"""
import ctypes
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from ... import errors
from ...errors import BuildError

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWUSER = 0x10000000
MS_RDONLY = 0x1
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2

# rootfs path -> host path bound there for section scripts (dirs recursively)
SCRIPT_BINDS: Tuple[Tuple[str, str], ...] = (("proc", "/proc"), ("sys", "/sys"), ("dev", "/dev"))
HOST_FILES: Tuple[str, ...] = ("etc/resolv.conf", "etc/hosts")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TAIL_LINES = 20


@dataclass(frozen=True)
class IdMap:
    inner: int
    outer: int
    count: int

    def text(self) -> str:
        return f"{self.inner} {self.outer} {self.count}"


@dataclass
class UsernsPlan:
    uid_maps: List[IdMap]
    gid_maps: List[IdMap]
    use_helpers: bool          # newuidmap/newgidmap (several ranges) or a direct single-id write

    def describe(self) -> str:
        kind = "subordinate ids" if self.use_helpers else "single-id map"
        return f"fakeroot ({kind}: uid {' / '.join(m.text() for m in self.uid_maps)})"


def subordinate_range(text: str, user: str, uid: int) -> Optional[Tuple[int, int]]:
    """First ``user:start:count`` (or ``uid:start:count``) line of /etc/subuid-style text."""
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] not in (user, str(uid)):
            continue
        if parts[1].isdigit() and parts[2].isdigit() and int(parts[2]) > 0:
            return int(parts[1]), int(parts[2])
    return None


def plan_userns(uid: int, gid: int, user: str, subuid_text: str, subgid_text: str,
                have_helpers: bool) -> UsernsPlan:
    """Which ids map where; computed from plain inputs so tests need no privileges."""
    sub_u = subordinate_range(subuid_text, user, uid)
    sub_g = subordinate_range(subgid_text, user, uid)
    if have_helpers and sub_u and sub_g:
        return UsernsPlan([IdMap(0, uid, 1), IdMap(1, sub_u[0], sub_u[1])],
                          [IdMap(0, gid, 1), IdMap(1, sub_g[0], sub_g[1])], True)
    return UsernsPlan([IdMap(0, uid, 1)], [IdMap(0, gid, 1)], False)


def host_plan() -> UsernsPlan:
    uid, gid = os.getuid(), os.getgid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    helpers = bool(shutil.which("newuidmap") and shutil.which("newgidmap"))
    return plan_userns(uid, gid, user, _read("/etc/subuid"), _read("/etc/subgid"), helpers)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


# --- kernel calls ------------------------------------------------------------------------------

_libc = None


def libc():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                ctypes.c_ulong, ctypes.c_void_p]
        _libc.unshare.argtypes = [ctypes.c_int]
    return _libc


def unshare(flags: int) -> None:
    if libc().unshare(flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"unshare: {os.strerror(e)}")


def mount(source: Optional[str], target: str, fstype: Optional[str], flags: int) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    if libc().mount(enc(source), enc(target), enc(fstype), flags, None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {source} on {target}: {os.strerror(e)}")


# --- running a Python callable as fake root ----------------------------------------------------

def _write_maps(pid: int, plan: UsernsPlan) -> None:
    if plan.use_helpers:
        for tool, maps in (("newuidmap", plan.uid_maps), ("newgidmap", plan.gid_maps)):
            args = [str(x) for m in maps for x in (m.inner, m.outer, m.count)]
            r = subprocess.run([tool, str(pid), *args], capture_output=True, text=True)
            if r.returncode != 0:
                raise BuildError(f"fakeroot: {tool} failed: {r.stderr.strip() or r.returncode} "
                                 "(check /etc/subuid and /etc/subgid)")
        return
    # An unprivileged process may map only its own ids, and must give up setgroups first.
    with open(f"/proc/{pid}/setgroups", "w") as f:
        f.write("deny")
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write("\n".join(m.text() for m in plan.uid_maps) + "\n")
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write("\n".join(m.text() for m in plan.gid_maps) + "\n")


def run_as_fakeroot(func: Callable[[], None], plan: Optional[UsernsPlan] = None) -> None:
    """Run ``func()`` in a forked child that is root in a new user namespace.

    An HpccontError raised by ``func`` is raised again here, same class and message; the
    child's exit is waited for even when the user presses ^C (the child cleans up first).
    """
    plan = plan or host_plan()
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        os.close(ready_r)
        os.close(go_w)
        os.close(res_r)
        _fakeroot_child(func, plan, ready_w, go_r, res_w)
    os.close(ready_w)
    os.close(go_r)
    os.close(res_w)
    # scancel/timeout signal this process: the build child must hear it to clean up.
    previous = signal.signal(signal.SIGTERM, lambda *_: _forward(pid, signal.SIGTERM))
    try:
        ok = os.read(ready_r, 1) == b"1"
        if ok:
            try:
                _write_maps(pid, plan)
                os.write(go_w, b"1")
            except (OSError, BuildError) as e:
                os.write(go_w, b"0")
                os.close(go_w)
                _wait(pid)
                if isinstance(e, BuildError):
                    raise
                raise BuildError(f"fakeroot: cannot set up the user namespace id map: {e}") from None
        os.close(go_w)
        result = _read_all(res_r)
    finally:
        os.close(ready_r)
        os.close(res_r)
        status = _wait(pid)
        signal.signal(signal.SIGTERM, previous)
    _raise_result(result, status)


def _forward(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError:
        pass


def _fakeroot_child(func, plan, ready_w, go_r, res_w) -> None:
    code = 0
    try:
        try:
            unshare(CLONE_NEWUSER)
        except OSError as e:
            os.write(ready_w, b"0")
            raise BuildError(f"fakeroot: cannot create a user namespace ({e.strerror}); "
                             "user namespaces may be disabled on this host") from None
        os.write(ready_w, b"1")
        if os.read(go_r, 1) != b"1":
            os._exit(1)
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        if plan.use_helpers:
            os.setgroups([])
        # After the id changes, which clear it: a build killed with -9 takes this child along.
        from ..leftovers import die_with_parent
        die_with_parent()
        os.environ["HOME"] = "/root" if not os.environ.get("HOME") else os.environ["HOME"]
        func()
        payload = {"ok": True}
    except errors.HpccontError as e:
        payload = {"ok": False, "cls": type(e).__name__, "msg": str(e), "code": e.exit_code}
    except KeyboardInterrupt:
        payload = {"ok": False, "cls": "BuildError", "msg": "interrupted", "code": 130}
    except BaseException as e:  # noqa: BLE001 - reported to the parent as one line
        payload = {"ok": False, "cls": "internal", "msg": f"{type(e).__name__}: {e}",
                   "trace": traceback.format_exc(), "code": 255}
        code = 1
    try:
        os.write(res_w, json.dumps(payload).encode())
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except InterruptedError:
            continue
        except KeyboardInterrupt:
            continue  # the child got the same ^C; its report follows
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _wait(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            return 0
        except KeyboardInterrupt:
            continue


def _raise_result(raw: bytes, status: int) -> None:
    try:
        payload = json.loads(raw.decode()) if raw else None
    except ValueError:
        payload = None
    if payload is None:
        raise BuildError(f"fakeroot build process ended without a result (wait status {status})")
    if payload.get("ok"):
        return
    if payload["cls"] == "internal":
        if os.environ.get("HPCCONT_DEBUG"):
            sys.stderr.write(payload.get("trace", ""))
        raise BuildError(f"internal error in the build: {payload['msg']}")
    cls = getattr(errors, payload["cls"], BuildError)
    if not (isinstance(cls, type) and issubclass(cls, errors.HpccontError)):
        cls = BuildError
    raise cls(payload["msg"], exit_code=payload["code"])


# --- running a script chrooted in a rootfs ----------------------------------------------------

@dataclass
class ScriptRun:
    """What to run inside the rootfs, computed before anything is forked."""
    rootfs: str
    argv: List[str]
    env: Dict[str, str]
    cwd: str = "/"
    binds: Tuple[Tuple[str, str], ...] = SCRIPT_BINDS
    host_files: Tuple[str, ...] = HOST_FILES
    writable: bool = True


@dataclass
class ScriptResult:
    status: int
    tail: List[str] = field(default_factory=list)


def run_script(run: ScriptRun, echo=None) -> ScriptResult:
    """Run ``run.argv`` chrooted in ``run.rootfs``; stream its output to ``echo`` (a callable)
    and keep the last lines for the error message."""
    created = _prepare_mountpoints(run)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(out_r)
        os.close(err_r)
        _script_child(run, out_w, err_w)
    os.close(out_w)
    os.close(err_w)
    tail: deque = deque(maxlen=TAIL_LINES)
    interrupted = False
    try:
        with os.fdopen(out_r, "rb") as stream:
            while True:
                try:
                    for raw in _lines(stream):
                        line = raw.decode("utf-8", "replace")
                        tail.append(line.rstrip("\n"))
                        if echo:
                            echo(line)
                    break
                except KeyboardInterrupt:
                    # The script runs in its own process group: stop all of it, then drain.
                    interrupted = True
                    kill_group(pid)
        setup_error = _read_all(err_r).decode("utf-8", "replace")
    finally:
        os.close(err_r)
        status = _wait(pid)
        for path in created:
            try:
                os.unlink(path)
            except OSError:
                pass
    if interrupted:
        raise KeyboardInterrupt
    if setup_error:
        raise BuildError(setup_error)
    code = os.waitstatus_to_exitcode(status)
    return ScriptResult(code if code >= 0 else 128 - code, list(tail))


def _lines(stream):
    while True:
        line = stream.readline()
        if not line:
            return
        yield line


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def _prepare_mountpoints(run: ScriptRun) -> List[str]:
    """Create missing mount points; return the files created only for this run."""
    created = []
    for inside, _host in run.binds:
        path = os.path.join(run.rootfs, inside)
        if not os.path.lexists(path):
            os.makedirs(path, exist_ok=True)
    for rel in run.host_files:
        host = "/" + rel
        path = os.path.join(run.rootfs, rel)
        if not os.path.exists(host) or os.path.islink(path):
            continue
        if not os.path.lexists(path) and os.path.isdir(os.path.dirname(path)):
            open(path, "a").close()
            created.append(path)
    return created


def _exec_as_pid_one(run: ScriptRun) -> None:
    """Fork PID 1 of the new PID namespace to exec the section; stay outside, exit as it did."""
    pid = os.fork()
    if pid == 0:
        from ..leftovers import die_with_parent
        die_with_parent()
        if ("proc", "/proc") in run.binds:
            # the namespace's own /proc, in place of the host's: /proc/$$ is the script
            try:
                mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            except OSError:
                pass             # the host's stays: only /proc/$$ (1 here) is then wrong
        # %post gets the default SIGPIPE/SIGXFSZ the interpreter ignored (`yes | head` ends)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        os.execve(run.argv[0], run.argv, run.env)
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # ^C reaches the group: PID 1 answers
    _, status = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status)
             else 128 + os.WTERMSIG(status))


def _script_child(run: ScriptRun, out_w: int, err_w: int) -> None:
    step = "set up the section's container"
    try:
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        os.close(out_w)
        fd = os.open("/dev/null", os.O_RDONLY)
        os.dup2(fd, 0)
        os.close(fd)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.setpgid(0, 0)
        # The section runs as PID 1 of a PID namespace of its own, this process outside it:
        # when the build is killed (-9: no cleanup runs) this process dies with it, PID 1 with
        # this process, and the kernel kills everything left in the namespace, so that no
        # %post (an apt-get, say) goes on in a work directory the next build removes.
        from ..leftovers import die_with_parent
        die_with_parent()
        unshare(CLONE_NEWNS | CLONE_NEWPID)
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        for inside, host in run.binds:
            step = f"bind {host} into the image"
            mount(host, os.path.join(run.rootfs, inside), None, MS_BIND | MS_REC)
        for rel in run.host_files:
            target = os.path.join(run.rootfs, rel)
            if os.path.exists("/" + rel) and os.path.isfile(target) and not os.path.islink(target):
                step = f"bind /{rel} into the image"
                mount("/" + rel, target, None, MS_BIND)
        step = f"chroot into {run.rootfs}"
        os.chroot(run.rootfs)
        step = f"change to directory {run.cwd} in the image"
        os.chdir(run.cwd)
        step = f"run {run.argv[0]} in the image"
        _exec_as_pid_one(run)
    except OSError as e:
        os.write(err_w, f"cannot {step}: {e.strerror or e}".encode())
    except BaseException as e:  # noqa: BLE001
        os.write(err_w, f"cannot {step}: {e}".encode())
    os._exit(127)
