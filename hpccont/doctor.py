"""``hpccont doctor``: is this node set up to run containers (and containered Slurm jobs)?

Each check is a small function of a ``Context`` (every path it reads, every command it may run)
that returns one ``Result``: OK, WARN, FAIL or SKIP (not applicable here, e.g. no NVIDIA
driver on a CPU node), what was found and, unless OK, what to do.  ``CHECKS`` is the table the
command runs, in order.  Tests point a Context at faulty copies of the files instead of
changing the machine.

Only the standard library is imported at module level; checks that need more (the site config
schema, host MPI discovery, ctypes) import it themselves.
"""
from __future__ import annotations

import glob
import os
import re
import stat
import subprocess
import sys

from . import elf
from .schedulers.slurm.conf import SlurmConf
TYPE_CHECKING = False   # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"

# Where hpccont's runtime looks for squashfuse / fuse-overlayfs (runtime/apply.py SYSTEM_BIN).
SYSTEM_BIN = ("/usr/bin", "/usr/local/bin", "/bin", "/usr/sbin", "/sbin")
_MACHINE = os.uname().machine
_MULTIARCH = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu",
              "ppc64le": "powerpc64le-linux-gnu"}.get(_MACHINE, f"{_MACHINE}-linux-gnu")
# Slurm's PluginDir when slurm.conf does not set it: Debian, RPM builds, source builds.
SLURM_PLUGIN_DIRS = (f"/usr/lib/{_MULTIARCH}/slurm-wlm", f"/usr/lib/{_MULTIARCH}/slurm",
                     "/usr/lib64/slurm", "/usr/lib/slurm", "/usr/local/lib/slurm",
                     "/usr/local/lib64/slurm")
# Where Lua modules (lua-posix) live; {lua} is the version Slurm's Lua plugin links ("5.1").
LUA_DIRS = (f"/usr/lib/{_MULTIARCH}/lua/{{lua}}", "/usr/share/lua/{lua}", "/usr/lib64/lua/{lua}",
            "/usr/lib/lua/{lua}", "/usr/local/lib/lua/{lua}", "/usr/local/share/lua/{lua}")
LIB_DIRS = (f"/usr/lib/{_MULTIARCH}", f"/lib/{_MULTIARCH}", "/usr/lib64", "/usr/lib",
            "/usr/local/lib", "/usr/local/lib64")
# SlurmdSpoolDir when slurm.conf does not set it: Debian's build, then Slurm's own default.
SPOOL_DEFAULTS = ("/var/lib/slurm/slurmd", "/var/spool/slurmd")
NETWORK_FS = ("nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "ceph", "glusterfs",
              "fuse.glusterfs", "fuse.sshfs", "fuse.cephfs", "9p", "afs", "pvfs2", "orangefs",
              "wekafs", "panfs")


class Result:
    __slots__ = ("status", "name", "found", "fix")

    def __init__(self, status: str, name: str, found: str, fix: str = ""):
        self.status, self.name, self.found, self.fix = status, name, found, fix

    def as_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "found": self.found, "fix": self.fix}

    def line(self, width: int = 14) -> str:
        text = f"{self.status:<4} {self.name:<{width}} {self.found}"
        if self.fix and self.status != OK:
            text += f"  -> {self.fix}"
        return text

    def __repr__(self) -> str:
        return f"Result({self.line()!r})"


class Context:
    """Everything a check reads.  Defaults are the real machine; tests replace fields."""

    def __init__(self, slurm_conf: Optional[str] = None, environ: Optional[Mapping[str, str]] = None,
                 **fields):
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.slurm_conf = (slurm_conf or self.environ.get("SLURM_CONF")
                           or "/etc/slurm/slurm.conf")
        self.euid = os.geteuid()
        self.node = os.uname().nodename.split(".")[0]   # for %n / %h in slurm.conf paths
        self.proc_sys = "/proc/sys"
        self.proc = "/proc"
        self.mountinfo = "/proc/self/mountinfo"
        self.dev_fuse = "/dev/fuse"
        self.dev_dir = "/dev"
        self.bin_dirs: Sequence[str] = SYSTEM_BIN
        self.slurm_plugin_dirs: Optional[Sequence[str]] = None   # None: slurm.conf PluginDir, defaults
        self.lib_dirs: Sequence[str] = LIB_DIRS
        self.lua_dirs: Sequence[str] = LUA_DIRS
        self.slurm_include = "/usr/include"
        self.slurm_version: Optional[str] = None      # None: ask slurmd -V / srun --version
        self.shipped_cli_filter: Optional[str] = None  # None: spank_plugin/cli_filter.lua if present
        self.nvml_lib = "libnvidia-ml.so.1"
        self.mpi_root = "/"                           # HostView root for host MPI discovery
        self.probe_userns = True                      # really try a user namespace
        self.kernel_release = os.uname().release
        self.package_dir = os.path.dirname(os.path.abspath(__file__))   # the hpccont package
        for k, v in fields.items():
            if not hasattr(self, k):
                raise TypeError(f"unknown Context field {k!r}")
            setattr(self, k, v)
        self._slurm = None
        self._config = None

    @property
    def is_root(self) -> bool:
        return self.euid == 0

    def slurm(self) -> "SlurmConf":
        if self._slurm is None:
            self._slurm = SlurmConf.read(self.slurm_conf)
        return self._slurm

    def config(self) -> Tuple[dict, Optional[str]]:
        """(site config, error): defaults with the error when the file is invalid."""
        if self._config is None:
            from . import config
            try:
                self._config = (config.load(self.environ, use_cache=False), None)
            except Exception as e:  # ConfigError, or PyYAML missing
                msg = e.one_line() if hasattr(e, "one_line") else str(e)
                self._config = (config.defaults(), msg)
        return self._config

    def plugin_dirs(self) -> List[str]:
        if self.slurm_plugin_dirs is not None:
            return list(self.slurm_plugin_dirs)
        conf = self.slurm()
        value = conf.get("PluginDir") if conf.ok else None
        return [d for d in value.split(":") if d] if value else list(SLURM_PLUGIN_DIRS)

    def which(self, name: str) -> Optional[str]:
        for d in self.bin_dirs:
            p = os.path.join(d, name)
            if os.path.isfile(p) and os.access(p, os.X_OK):
                return p
        return None

    def expand(self, path: str) -> str:
        """slurm.conf's %n (node name) and %h (host name) in a path."""
        return path.replace("%n", self.node).replace("%h", self.node)


# -------------------------------------------------------------------------------------------
# slurm.conf and plugstack.conf

class PlugstackLine:
    __slots__ = ("file", "lineno", "kind", "path", "args")

    def __init__(self, file: str, lineno: int, kind: str, path: str, args: List[str]):
        self.file, self.lineno, self.kind, self.path, self.args = file, lineno, kind, path, args

    def arg(self, key: str) -> Optional[str]:
        value = None
        for a in self.args:
            k, sep, v = a.partition("=")
            if sep and k == key:
                value = v
        return value


def plugstack_path(conf: SlurmConf) -> str:
    value = conf.get("PlugStackConfig") if conf.ok else None
    if value:
        return conf.expand_include(value)
    return os.path.join(conf.dir, "plugstack.conf")


def read_plugstack(path: str) -> Tuple[List[str], List[PlugstackLine], List[str]]:
    """(files read, plugin lines, problems) of a plugstack file and the files it includes."""
    files: List[str] = []
    plugins: List[PlugstackLine] = []
    problems: List[str] = []

    def visit(p: str, depth: int) -> None:
        try:
            with open(p) as f:
                text = f.read()
        except OSError as e:
            problems.append(f"cannot read {p}: {e.strerror}")
            return
        files.append(p)
        for n, raw in enumerate(text.splitlines(), 1):
            words = raw.split("#", 1)[0].split()
            if not words:
                continue
            if words[0] == "include" and len(words) > 1:
                target = words[1]
                if not os.path.isabs(target):
                    target = os.path.join(os.path.dirname(p), target)
                hits = sorted(glob.glob(target))
                if not hits and not glob.has_magic(target):
                    problems.append(f"{p}:{n}: included file {target} does not exist")
                for inc in hits:
                    if depth < 8:
                        visit(inc, depth + 1)
            elif words[0] in ("required", "optional") and len(words) > 1:
                plugins.append(PlugstackLine(p, n, words[0], words[1], words[2:]))
            else:
                problems.append(f"{p}:{n}: not a plugstack line: {raw.strip()}")

    visit(path, 0)
    return files, plugins, problems


def hpccont_lines(plugins: Sequence[PlugstackLine]) -> List[PlugstackLine]:
    return [p for p in plugins if os.path.basename(p.path) == "hpccont_spank.so"]


# -------------------------------------------------------------------------------------------
# ELF: the value of an exported data symbol (plugin_version, plugin_name, plugin_type)



def _cstring(b: Optional[bytes]) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace") if b else ""


def spank_plugin_info(path: str) -> Dict[str, object]:
    """plugin_name, plugin_type and plugin_version (as an int) of a Slurm plugin file."""
    with open(path, "rb") as f:
        data = f.read()
    little = data[5:6] != b"\x02"
    syms = elf.symbols(data, ("plugin_name", "plugin_type", "plugin_version"))
    ver = syms.get("plugin_version")
    number = None
    if ver and len(ver) >= 4:
        number = int.from_bytes(ver[:4], "little" if little else "big")
    return {"name": _cstring(syms.get("plugin_name")), "type": _cstring(syms.get("plugin_type")),
            "version": number}


def version_text(number: int) -> str:
    """0x160508 -> "22.05.8" (SLURM_VERSION_NUMBER layout)."""
    return f"{(number >> 16) & 0xff}.{(number >> 8) & 0xff:02d}.{number & 0xff}"


def version_number(text: str) -> Optional[int]:
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    if not m:
        return None
    major, minor, micro = (int(x) for x in m.groups())
    return (major << 16) | (minor << 8) | micro


def running_slurm_version(ctx: Context) -> Tuple[Optional[int], str]:
    """(SLURM_VERSION_NUMBER of the installed Slurm, where it came from)."""
    if ctx.slurm_version:
        return version_number(ctx.slurm_version), "given"
    sbin = list(ctx.bin_dirs) + [d for d in ("/usr/sbin", "/sbin", "/usr/local/sbin")
                                 if d not in ctx.bin_dirs]
    for prog, flag in (("slurmd", "-V"), ("srun", "--version"), ("sinfo", "--version")):
        path = next((os.path.join(d, prog) for d in sbin
                     if os.access(os.path.join(d, prog), os.X_OK)), None)
        if not path:
            continue
        out = _output([path, flag])
        number = version_number(out or "")
        if number is not None:
            return number, f"{prog} {flag}"
    return None, ""


def header_slurm_version(ctx: Context) -> Optional[int]:
    try:
        with open(os.path.join(ctx.slurm_include, "slurm", "slurm_version.h")) as f:
            m = re.search(r"#define\s+SLURM_VERSION_NUMBER\s+(0x[0-9a-fA-F]+)", f.read())
    except OSError:
        return None
    return int(m.group(1), 16) if m else None


def _output(argv: List[str], timeout: float = 10) -> Optional[str]:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return (r.stdout or "") + (r.stderr or "")


# -------------------------------------------------------------------------------------------
# File safety: what root executes must be writable by root only.

def unsafe_reason(path: str) -> Optional[str]:
    """Why ``path`` (a file root runs) could be changed by someone else; None if it cannot.

    The file itself and every directory above it must be owned by root and not group- or
    other-writable (a sticky directory such as /tmp is fine: others cannot replace root's
    entries there).  Symbolic links are followed, and the directories of the link checked too.
    """
    for p in dict.fromkeys((os.path.abspath(path), os.path.realpath(path))):
        try:
            st = os.lstat(p)
        except OSError as e:
            return f"{p}: {e.strerror}"
        if not stat.S_ISLNK(st.st_mode):
            if st.st_uid != 0:
                return f"{p} is owned by uid {st.st_uid}, not root"
            if st.st_mode & 0o022:
                return f"{p} is mode {stat.S_IMODE(st.st_mode):04o} (group/other-writable)"
        d = p
        while d != "/":
            d = os.path.dirname(d)
            try:
                dst = os.stat(d)
            except OSError as e:
                return f"{d}: {e.strerror}"
            if dst.st_uid != 0:
                return f"directory {d} is owned by uid {dst.st_uid}, not root"
            if dst.st_mode & 0o022 and not dst.st_mode & stat.S_ISVTX:
                return (f"directory {d} is mode {stat.S_IMODE(dst.st_mode):04o} "
                        "(group/other-writable)")
    return None


def script_header(path: str) -> Tuple[Optional[str], List[str], List[str]]:
    """(``#!`` interpreter, its arguments, the ``sys.path[0:0] = [...]`` entries) of a launcher
    script as hpccont.cli.launchers writes it; (None, [], []) for a binary."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", "replace")
    except OSError:
        return None, [], []
    if not head.startswith("#!"):
        return None, [], []
    words = head[2:].split("\n", 1)[0].split()
    paths: List[str] = []
    m = re.search(r"^sys\.path\[0:0\] = (\[.*\])$", head, re.M)
    if m:
        import ast
        try:
            paths = [p for p in ast.literal_eval(m.group(1)) if isinstance(p, str)]
        except (ValueError, SyntaxError):
            paths = []
    return (words[0] if words else None), words[1:], paths


def launcher_problem(launcher: str) -> Optional[str]:
    """What lets someone other than root change what the plugin's launcher runs as root."""
    bad = unsafe_reason(launcher)
    if bad:
        return bad
    interp, args, paths = script_header(launcher)
    if interp is None:
        return None
    if not os.path.isabs(interp):
        return f"{launcher}: interpreter {interp!r} is not an absolute path"
    name = os.path.basename(interp)
    if name == "env":
        return f"{launcher} finds its interpreter through PATH (#!{interp})"
    bad = unsafe_reason(interp)
    if bad:
        return bad
    if name.startswith("python"):
        flags = "".join(a[1:] for a in args if a.startswith("-") and not a.startswith("--"))
        if "I" not in flags and "E" not in flags:
            return (f"{launcher}: #!{interp} {' '.join(args)} honours PYTHONPATH and the "
                    "user site (no -I): a job's environment could run code as root")
    for p in paths:
        bad = unsafe_reason(p)
        if bad:
            return f"sys.path entry {bad}"
    return None


# -------------------------------------------------------------------------------------------
# The checks

def check_userns(ctx: Context) -> Result:
    name = "userns"
    found = []
    try:
        with open(os.path.join(ctx.proc_sys, "user", "max_user_namespaces")) as f:
            maximum = int(f.read().strip())
    except (OSError, ValueError):
        maximum = None
    if maximum == 0:
        return Result(FAIL, name, "user.max_user_namespaces is 0: unprivileged containers are off",
                      "sysctl -w user.max_user_namespaces=15000 (and in /etc/sysctl.d/)")
    found.append(f"max_user_namespaces={maximum if maximum is not None else 'unknown'}")
    for key, bad, fix in (
            ("unprivileged_userns_clone", "0", "sysctl -w kernel.unprivileged_userns_clone=1"),
            ("apparmor_restrict_unprivileged_userns", "1",
             "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor profile "
             "granting userns to the hpccont interpreter")):
        try:
            with open(os.path.join(ctx.proc_sys, "kernel", key)) as f:
                value = f.read().strip()
        except OSError:
            continue
        if value == bad:
            return Result(FAIL, name, f"kernel.{key} is {value}: users cannot create user "
                          "namespaces", fix)
        found.append(f"{key}={value}")
    if not ctx.probe_userns:
        return Result(OK, name, ", ".join(found) + " (not probed)")
    who, err = probe_userns(ctx.is_root)
    if err:
        return Result(FAIL, name, f"{', '.join(found)}; probe as {who} failed: {err}",
                      "allow unprivileged user namespaces (sysctl, AppArmor/SELinux policy, "
                      "container runtime seccomp)")
    return Result(OK, name, f"{', '.join(found)}; probe as {who}: user+mount namespace, "
                  "uid map and a tmpfs mount work")


def probe_userns(as_root: bool) -> Tuple[str, Optional[str]]:
    """Create a user + mount namespace in a child, map the uid and mount a tmpfs inside.

    Run by root, the child first becomes ``nobody``: the question is what users can do.
    Returns (who, error or None).  Nothing changes outside the child's own namespaces.
    """
    import ctypes
    import pwd
    try:
        nobody = pwd.getpwnam("nobody")
        ids = (nobody.pw_uid, nobody.pw_gid)
    except KeyError:
        ids = (65534, 65534)
    who = f"nobody (uid {ids[0]})" if as_root else f"uid {os.getuid()}"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # child: report "stage: error" on the pipe, never return
        os.close(r)
        stage = "setuid"
        try:
            if as_root:
                os.setgroups([])
                os.setgid(ids[1])
                os.setuid(ids[0])
                # Changing ids made the process non-dumpable: /proc/self/uid_map would stay
                # root's.  A user's own process is dumpable.
                ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)   # PR_SET_DUMPABLE
            uid, gid = os.getuid(), os.getgid()
            libc = ctypes.CDLL(None, use_errno=True)
            stage = "unshare(CLONE_NEWUSER|CLONE_NEWNS)"
            if libc.unshare(0x10000000 | 0x00020000) != 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            stage = "uid/gid map"
            for fname, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"),
                                ("gid_map", f"0 {gid} 1")):
                with open(f"/proc/self/{fname}", "w") as f:
                    f.write(text)
            stage = "mount tmpfs"
            libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
            if libc.mount(None, b"/", None, 0x4000 | 0x40000, None) != 0:  # MS_REC|MS_PRIVATE
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            if libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) != 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            os.write(w, b"ok")
            os._exit(0)
        except BaseException as e:   # noqa: B036 - the child must always _exit
            try:
                msg = f"{stage}: {e.strerror if isinstance(e, OSError) and e.strerror else e}"
                os.write(w, msg.encode()[:500])
            finally:
                os._exit(1)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        msg = f.read().decode("utf-8", "replace")
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and msg == "ok":
        return who, None
    return who, msg or f"child ended with status {status}"


def check_fuse_device(ctx: Context) -> Result:
    name = "fuse-device"
    path = ctx.dev_fuse
    try:
        st = os.stat(path)
    except OSError as e:
        return Result(FAIL, name, f"{path}: {e.strerror}",
                      "load/build in FUSE (modprobe fuse) so that /dev/fuse exists")
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISCHR(st.st_mode):
        return Result(FAIL, name, f"{path} is not a character device", "mknod -m 0666 /dev/fuse c 10 229")
    found = f"{path} character device {os.major(st.st_rdev)},{os.minor(st.st_rdev)} mode {mode:04o}"
    if mode & 0o006 != 0o006:
        return Result(FAIL, name, found + ": users cannot open it (squashfuse without root fails)",
                      f"chmod 0666 {path}; make it stay with a udev rule "
                      'KERNEL=="fuse", MODE="0666" (or tmpfiles.d)')
    if not ctx.is_root and not os.access(path, os.R_OK | os.W_OK):
        return Result(FAIL, name, found + ": this user cannot open it (ACL, LSM)",
                      "allow users read/write access to /dev/fuse")
    return Result(OK, name, found)


def _version_of(path: str) -> str:
    """The version a program prints for --version (the line naming the program first:
    fuse-overlayfs also prints fusermount3's)."""
    out = _output([path, "--version"]) or ""
    prog = os.path.basename(path).split("_")[0]
    lines = sorted(out.splitlines(), key=lambda line: prog not in line)
    for line in lines:
        m = re.search(r"(\d+\.\d+(?:\.\d+)*)", line)
        if m:
            return m.group(1)
    return "version unknown"


def check_squashfuse(ctx: Context) -> Result:
    name = "squashfuse"
    cfg, _ = ctx.config()
    wanted = cfg["runtime"]["squashfuse"]
    needed = cfg["runtime"]["rootless"] != "never" or cfg["runtime"]["root_mount"] == "fuse"
    found, missing = [], []
    for prog in (wanted, "squashfuse" if wanted == "squashfuse_ll" else "squashfuse_ll"):
        p = ctx.which(prog)
        if p:
            found.append(f"{p} {_version_of(p)}")
        else:
            missing.append(prog)
    if wanted in missing:
        where = ":".join(ctx.bin_dirs)
        msg = f"{wanted} (runtime.squashfuse) not found in {where}"
        return Result(FAIL if needed else WARN, name, msg,
                      "install squashfuse (Debian/Ubuntu: apt install squashfuse; "
                      "RHEL: dnf install squashfuse), or set runtime.squashfuse")
    return Result(OK, name, "; ".join(found) + (f" ({wanted} is used)" if len(found) > 1 else ""))


def check_fuse_overlayfs(ctx: Context) -> Result:
    name = "fuse-overlayfs"
    cfg, _ = ctx.config()
    configured = cfg["runtime"]["overlay"] == "fuse-overlayfs"
    p = ctx.which("fuse-overlayfs")
    if p:
        return Result(OK, name, f"{p} {_version_of(p)}"
                      + (" (runtime.overlay)" if configured else ""))
    where = ":".join(ctx.bin_dirs)
    if configured:
        return Result(FAIL, name, f"runtime.overlay is fuse-overlayfs but it is not in {where}: "
                      "--writable-tmpfs fails for users", "install fuse-overlayfs")
    kernel = tuple(int(x) for x in re.findall(r"\d+", ctx.kernel_release)[:2] or (0, 0))
    if kernel < (5, 11):
        return Result(WARN, name, f"not in {where}, and kernel {ctx.kernel_release} has no "
                      "unprivileged overlayfs (5.11+)",
                      "install fuse-overlayfs and set runtime.overlay: fuse-overlayfs")
    return Result(OK, name, f"not installed; not needed (runtime.overlay: kernel, "
                  f"kernel {ctx.kernel_release})")


def check_site_config(ctx: Context) -> Result:
    name = "site-config"
    from . import config
    path = config.config_path(ctx.environ)
    cfg, err = ctx.config()
    if err:
        return Result(FAIL, name, err, f"fix {path} (every key: site-config/hpccont.yaml; "
                      "'hpccont config show' prints the result)")
    if not os.path.exists(path):
        return Result(OK, name, f"{path} absent: defaults")
    problems = []
    if cfg["signatures"]["require"] and not cfg["signatures"]["keyring"]:
        problems.append("signatures.require is true but signatures.keyring is empty: "
                        "every image would be refused")
    for key in cfg["signatures"]["keyring"]:
        if isinstance(key, str) and not os.access(key, os.R_OK):
            problems.append(f"signatures.keyring file {key} is not readable")
    for sec, key in (("images", "image_dirs"), ("images", "allowed_dirs")):
        for d in cfg[sec][key]:
            if isinstance(d, str) and not os.path.isdir(d):
                problems.append(f"{sec}.{key} directory {d} does not exist")
    if problems:
        return Result(WARN, name, f"{path} valid; " + "; ".join(problems), f"edit {path}")
    return Result(OK, name, f"{path} valid")


def stale_bytecode(package_dir: str) -> Tuple[int, List[str]]:
    """(modules, those without valid byte code for this interpreter): a pyc next to each
    source (``__pycache__/NAME.TAG.pyc``) whose header matches the source as the import
    system checks it (magic; source mtime and size, or the source hash when checked)."""
    import importlib.util
    modules, stale = 0, []
    for dirpath, dirnames, filenames in os.walk(package_dir):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in sorted(f for f in filenames if f.endswith(".py")):
            modules += 1
            source = os.path.join(dirpath, name)
            if not _bytecode_valid(source, importlib.util):
                stale.append(os.path.relpath(source, package_dir))
    return modules, stale


def _bytecode_valid(source: str, util) -> bool:
    try:
        with open(util.cache_from_source(source), "rb") as f:
            head = f.read(16)
        st = os.stat(source)
    except (OSError, NotImplementedError):
        return False
    if len(head) < 16 or head[:4] != util.MAGIC_NUMBER:
        return False
    flags = int.from_bytes(head[4:8], "little")
    if flags & 1:                              # hash-based (PEP 552)
        if not flags & 2:
            return True                        # unchecked: valid by definition
        with open(source, "rb") as f:
            return util.source_hash(f.read()) == head[8:16]
    return (int.from_bytes(head[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF and
            int.from_bytes(head[12:16], "little") == st.st_size & 0xFFFFFFFF)


def check_bytecode(ctx: Context) -> Result:
    """An install without byte code (a copied source tree, a read-only share nobody compiled)
    makes every launch compile what it imports from source: ~50 ms per Slurm step measured,
    since users cannot write the package's __pycache__."""
    name = "bytecode"
    modules, stale = stale_bytecode(ctx.package_dir)
    tag = sys.implementation.cache_tag
    if not stale:
        return Result(OK, name, f"{ctx.package_dir}: {modules} modules compiled for {tag}")
    shown = ", ".join(stale[:3]) + (f" and {len(stale) - 3} more" if len(stale) > 3 else "")
    return Result(WARN, name, f"{ctx.package_dir}: {len(stale)} of {modules} modules have no "
                  f"valid byte code for {tag} ({shown}): every launch compiles them",
                  f"as the installing user: {sys.executable} -m compileall -q "
                  f"{ctx.package_dir}")


def check_launcher(ctx: Context) -> Result:
    """The C launcher in front of the Python entry point (``make install``): a launch repeated
    with the same command line, directory and environment is built from its cold recipe, and a
    shared container is joined, without an interpreter (~30 ms less per start)."""
    name = "launcher"
    path = ctx.which("hpccont")
    if path is None:
        return Result(SKIP, name, f"no hpccont in {', '.join(ctx.bin_dirs)}")
    real = os.path.realpath(path)
    try:
        with open(real, "rb") as f:
            elf_file = f.read(4) == b"\x7fELF"
    except OSError as e:
        return Result(FAIL, name, f"{path}: {e.strerror}", "reinstall hpccont (make install)")
    if not elf_file:
        return Result(WARN, name, f"{path} is the Python entry point: every launch starts an "
                      "interpreter and plans (~30 ms per start)",
                      "build the C launcher in front of it (needs a C compiler): make -C "
                      f"launcher install O=DIR PY_BINDIR={os.path.dirname(real)}, then link "
                      f"{path} to DIR/hpccont-fast (make install does both)")
    # Run as root, it runs only what no one else can change
    bad = unsafe_reason(path) if ctx.is_root else None
    if bad:
        return Result(FAIL, name, f"{path} -> {real}: not run: {bad}",
                      "install hpccont as root into root-owned directories (make install)")
    # It execs the Python entry point for everything it does not apply itself (--version too)
    out = _output([path, "--version"], timeout=30) or ""
    if not re.match(r"hpccont \d", out):
        return Result(FAIL, name, f"{path} -> {real} cannot start its Python entry point: "
                      f"{out.strip().splitlines()[-1] if out.strip() else 'no output'}",
                      "rebuild it with PY_BINDIR set to the directory of the hpccont entry "
                      "point (make install)")
    return Result(OK, name, f"{path} -> {real}: the C launcher ({out.strip()})")


def check_fuse_cache(ctx: Context) -> Result:
    """The image server's caching adapter (launcher/fusecache.c), which the runtime preloads
    into squashfuse_ll from beside the entry point: without it every open, directory listing
    and link of an image is a FUSE round trip (~3,500 per Python start, measured)."""
    from .runtime.apply import CACHED_SERVERS, FUSE_CACHE
    name = "fuse-cache"
    cfg, _ = ctx.config()
    server = cfg["runtime"]["squashfuse"]
    if not cfg["runtime"]["fuse_cache"]:
        return Result(SKIP, name, "off (runtime.fuse_cache: false)")
    if server not in CACHED_SERVERS:
        return Result(WARN, name, f"runtime.squashfuse is {server}: the caching adapter "
                      f"serves {', '.join(CACHED_SERVERS)} only",
                      "set runtime.squashfuse: squashfuse_ll")
    entries = _fuse_cache_entries(ctx)
    if not entries:
        return Result(SKIP, name, f"no hpccont in {', '.join(ctx.bin_dirs)}")
    for what, entry in entries:
        adapter = os.path.join(os.path.dirname(entry), FUSE_CACHE)
        if not os.path.isfile(adapter):
            fix = ("install libfuse3's headers (Debian: apt install libfuse3-dev) and run "
                   f"make -C launcher cache O={os.path.dirname(adapter)} (make install does)")
            if what != "hpccont":
                fix = "rerun 'hpccont slurm install-plugin' from an hpccont that has it beside it"
            return Result(WARN, name, f"no {adapter} beside {what}: every open, listing and "
                          "link in an image is a round trip to squashfuse (~3,500 per Python "
                          "start)", fix)
        bad = unsafe_reason(adapter) if ctx.is_root else None
        if bad:
            return Result(FAIL, name, f"{adapter}: {bad}",
                          "install hpccont as root into root-owned directories (make install)")
    real = ctx.which(server)
    if real is None:
        return Result(SKIP, name, f"{server} not installed (see the squashfuse check)")
    dyn = elf.file_dynamic(real)
    lib = next((n for n in (dyn.needed if dyn else []) if n.startswith("libfuse3.so")), None)
    if lib is None:
        return Result(WARN, name, f"{real} is not linked with libfuse3: {adapter} cannot "
                      "wrap it, so opens, listings and links are not cached",
                      "install the distribution's squashfuse (built with libfuse3)")
    found = ", ".join(os.path.join(os.path.dirname(e), FUSE_CACHE) for _, e in entries)
    if not _loadable(LIBDEFLATE):
        return Result(WARN, name, f"{found}, preloaded into {real} ({lib}), but no "
                      f"{LIBDEFLATE}: gzip images (Apptainer's default) decompress with zlib, "
                      "2-3x slower", "install libdeflate (Debian: apt install libdeflate0)")
    return Result(OK, name, f"{found}, preloaded into {real} ({lib}); gzip blocks by "
                  f"{LIBDEFLATE}")


# The library the adapter's launcher/inflate.c opens, by this soname, for gzip blocks
LIBDEFLATE = "libdeflate.so.0"


def _loadable(soname: str) -> bool:
    """Whether dlopen finds ``soname`` as the image server will (the same search)."""
    import ctypes
    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def check_step_builder(ctx: Context) -> Result:
    """hpccont-step (launcher/step.c) beside the plugstack's launcher: the plugin runs it, as
    the user, in place of that launcher's prepare, and it builds a step's container in C from
    the template an earlier step recorded (docs/slurm.md)."""
    from .schedulers.slurm.template import BUILDER
    # it runs as each user of each step: one who could replace it would run as the others
    return _beside_launcher(ctx, "step-builder", BUILDER,
                            "every step's container is planned and built by Python (~60-80 ms "
                            "more per node and step, measured)",
                            "steps with a template start without Python")


def check_account_writer(ctx: Context) -> Result:
    """hpccont-account (launcher/account.c) beside the plugstack's launcher: the plugin runs
    it as root in place of that launcher's account, and it writes a step's accounting entry
    from root's template of an earlier one (docs/slurm.md)."""
    from .schedulers.slurm.accounting import WRITER
    # it runs as root: the plugin itself refuses one that anybody else could replace
    return _beside_launcher(ctx, "account-writer", WRITER,
                            "every step's accounting entry is written by Python as root "
                            "(~20 ms of CPU per node and step, measured)",
                            "steps with a template are accounted without Python")


def _beside_launcher(ctx: Context, name: str, program: str, missing_means: str,
                     ok_means: str) -> Result:
    """A C program the plugin runs from beside its launcher: OK, WARN when absent (what the
    steps lose: ``missing_means``), FAIL as root when somebody else could replace it."""
    missing = _slurm_missing(ctx, name)
    if missing:
        return missing
    launcher = _plugin_launcher(ctx)
    if launcher is None:
        return Result(SKIP, name, "no hpccont launcher in the plugstack (see 'plugstack')")
    path = os.path.join(os.path.dirname(launcher), program)
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        return Result(WARN, name, f"no {path}: {missing_means}",
                      "make install, then rerun 'hpccont slurm install-plugin'")
    bad = unsafe_reason(path) if ctx.is_root else None
    if bad:
        return Result(FAIL, name, f"{path}: {bad}",
                      "rerun 'hpccont slurm install-plugin' as root into root-owned directories")
    return Result(OK, name, f"{path}: {ok_means}")


def _plugin_launcher(ctx: Context) -> Optional[str]:
    """The plugstack's ``hpccont=`` launcher, when there is one hpccont line naming a file."""
    conf = ctx.slurm()
    if not conf.ok:
        return None
    ours = hpccont_lines(read_plugstack(plugstack_path(conf))[1])
    launcher = ours[0].arg("hpccont") if len(ours) == 1 else None
    return launcher if launcher and os.path.isabs(launcher) and os.path.isfile(launcher) else None


def _fuse_cache_entries(ctx: Context) -> list:
    """(what, path) of the entry points beside which the runtime looks for the adapter: the
    first hpccont here (through the C launcher's link, the Python entry point beside it) and
    the launcher the Slurm plugin runs, which builds the steps' containers."""
    out = []
    path = ctx.which("hpccont")
    if path:
        out.append(("hpccont", os.path.realpath(path)))
    launcher = _plugin_launcher(ctx)
    if launcher:
        out.append(("the Slurm plugin's launcher", launcher))
    return out


# -- Slurm ----------------------------------------------------------------------------------

def _slurm_missing(ctx: Context, name: str) -> Optional[Result]:
    conf = ctx.slurm()
    if conf.ok:
        return None
    return Result(SKIP, name, f"no slurm.conf ({conf.error})")


def check_slurm_conf(ctx: Context) -> Result:
    name = "slurm-conf"
    conf = ctx.slurm()
    if conf.ok:
        return Result(OK, name, f"{conf.path}: {len(conf.values)} settings, "
                      f"{len(conf.nodes)} NodeName lines")
    installed = any(ctx.which(p) or os.path.exists(f"/usr/sbin/{p}")
                    for p in ("srun", "slurmd"))
    if installed:
        return Result(FAIL, name, conf.error,
                      "point SLURM_CONF or --slurm-conf at the cluster's slurm.conf "
                      "(configless Slurm: the copy slurmd keeps in SlurmdSpoolDir/conf-cache)")
    return Result(SKIP, name, f"Slurm not installed ({conf.error})")


def check_plugstack(ctx: Context) -> Result:
    name = "plugstack"
    skip = _slurm_missing(ctx, name)
    if skip:
        return skip
    conf = ctx.slurm()
    main = plugstack_path(conf)
    files, plugins, problems = read_plugstack(main)
    if not files:
        return Result(FAIL, name, f"{main}: {problems[0] if problems else 'unreadable'}",
                      "run 'hpccont slurm install-plugin' and make sure the plugstack file "
                      "includes its line (PlugStackConfig in slurm.conf, default "
                      "plugstack.conf next to it)")
    ours = hpccont_lines(plugins)
    if not ours:
        hint = "run 'hpccont slurm install-plugin'"
        dropin = sorted(glob.glob(os.path.join(conf.dir, "plugstack.conf.d", "*.conf")))
        orphan = [f for f in dropin if f not in files and any(
            l.path.endswith("hpccont_spank.so") for l in read_plugstack(f)[1])]
        if orphan:
            hint = (f"{orphan[0]} has the hpccont line but {main} does not include it: add "
                    f"'include {os.path.join(conf.dir, 'plugstack.conf.d')}/*.conf' to {main}")
        return Result(FAIL, name, f"no hpccont_spank.so line in {', '.join(files)}", hint)
    if len(ours) > 1:
        where = ", ".join(f"{l.file}:{l.lineno}" for l in ours)
        return Result(FAIL, name, f"hpccont_spank.so is listed {len(ours)} times ({where})",
                      "keep one line: Slurm would load the plugin twice (conflicting options)")
    line = ours[0]
    where = f"{line.file}:{line.lineno}"
    try:
        from .schedulers.slurm import parse_plugin_args
        parse_plugin_args(line.args)
    except ImportError:
        pass
    except Exception as e:
        msg = e.one_line() if hasattr(e, "one_line") else str(e)
        return Result(FAIL, name, f"{where}: {msg}", "fix the arguments (see "
                      "spank_plugin/plugstack.conf.example) or rerun install-plugin")
    launcher = line.arg("hpccont") or "/usr/bin/hpccont"
    if not os.path.isabs(launcher):
        return Result(FAIL, name, f"{where}: hpccont={launcher} is not an absolute path",
                      "give the absolute path: slurmstepd runs it as root with Slurm's PATH")
    if not (os.path.isfile(launcher) and os.access(launcher, os.X_OK)):
        return Result(FAIL, name, f"{where}: hpccont={launcher} is not an executable file",
                      "install hpccont on this node (same path on every node) or fix hpccont=")
    bad = launcher_problem(launcher)
    if bad:
        return Result(FAIL, name, f"{where}: hpccont={launcher}: {bad}; slurmstepd runs it as root",
                      "rerun 'hpccont slurm install-plugin' (writes a root-owned launcher "
                      "running an isolated interpreter), or chown root / chmod go-w the "
                      "launcher, its interpreter, its package directories and their parents")
    notes = []
    for d in (line.arg("image_dir") or "").split(":"):
        if d and not os.path.isdir(d):
            notes.append(f"image_dir {d} does not exist")
    if line.kind == "optional":
        notes.append("listed as 'optional': if the plugin fails to load, jobs run without "
                     "their container")
    if problems:
        notes += problems
    found = (f"{where}: {line.kind} {line.path}, hpccont={launcher} (root-owned, not "
             "group/other-writable)")
    if notes:
        return Result(WARN, name, found + "; " + "; ".join(notes),
                      "use 'required', create the image directories, fix the listed lines")
    return Result(OK, name, found)


def check_spank_plugin(ctx: Context) -> Result:
    name = "spank-plugin"
    skip = _slurm_missing(ctx, name)
    if skip:
        return skip
    conf = ctx.slurm()
    _, plugins, _ = read_plugstack(plugstack_path(conf))
    ours = hpccont_lines(plugins)
    if not ours:
        return Result(FAIL, name, "no hpccont_spank.so in the plugstack (see 'plugstack')",
                      "run 'hpccont slurm install-plugin'")
    so = ours[0].path
    if not os.path.isabs(so):
        so = next((os.path.join(d, so) for d in ctx.plugin_dirs()
                   if os.path.exists(os.path.join(d, so))), os.path.join(ctx.plugin_dirs()[0], so))
    rebuild = "rebuild it for this Slurm: 'hpccont slurm install-plugin' on this node"
    try:
        info = spank_plugin_info(so)
    except OSError as e:
        return Result(FAIL, name, f"{so}: {e.strerror}", rebuild)
    except ValueError as e:
        return Result(FAIL, name, f"{so}: {e}", rebuild)
    if info["version"] is None or info["type"] != "spank":
        return Result(FAIL, name, f"{so} has no plugin_version/plugin_type=spank symbols: "
                      "not a SPANK plugin", rebuild)
    built = info["version"]
    found = f"{so}: plugin {info['name']!r} built for Slurm {version_text(built)}"
    if info["name"] != "hpccont":
        return Result(FAIL, name, found + ": not the hpccont plugin (its SPANK option "
                      "variables would be named after it)", rebuild)
    running, source = running_slurm_version(ctx)
    if running is None:
        return Result(WARN, name, found + "; cannot tell the installed Slurm version "
                      "(no slurmd -V, srun --version)", "run doctor where Slurm is installed")
    found += f", Slurm here is {version_text(running)} ({source})"
    header = header_slurm_version(ctx)
    if (built & 0xffff00) != (running & 0xffff00):
        extra = ""
        if header is not None and (header & 0xffff00) != (running & 0xffff00):
            extra = (f"; {ctx.slurm_include}/slurm/slurm_version.h is {version_text(header)} too: "
                     "install the libslurm-dev/slurm-devel matching the running Slurm first")
        return Result(FAIL, name, found + ": Slurm refuses it ('Incompatible Slurm plugin "
                      "version'), and with it every srun/sbatch/salloc", rebuild + extra)
    if header is not None and (header & 0xffff00) != (running & 0xffff00):
        return Result(WARN, name, found + f"; but the headers in {ctx.slurm_include} are "
                      f"{version_text(header)}: a rebuild now would not match",
                      "install the Slurm development headers of the running version")
    if built != running:
        found += " (micro release differs; Slurm compares major.minor for SPANK plugins)"
    return Result(OK, name, found)




def check_cli_filter(ctx: Context) -> Result:
    name = "cli-filter"
    skip = _slurm_missing(ctx, name)
    if skip:
        return skip
    conf = ctx.slurm()
    plugins = conf.list("CliFilterPlugins")
    if not any(p in ("cli_filter/lua", "lua") for p in plugins):
        return Result(FAIL, name, f"{conf.path}: CliFilterPlugins="
                      f"{','.join(plugins) or '(unset)'}: --container=IMAGE goes to Slurm's own "
                      "OCI option, not to hpccont", "add CliFilterPlugins=cli_filter/lua to "
                      "slurm.conf (on every node and submit host)")
    script = os.path.join(conf.dir, "cli_filter.lua")
    try:
        with open(script, "rb") as f:
            text = f.read()
    except OSError as e:
        return Result(FAIL, name, f"{script}: {e.strerror}: with cli_filter/lua configured, "
                      "every srun/sbatch/salloc fails", "run 'hpccont slurm install-plugin' "
                      "(writes cli_filter.lua next to slurm.conf)")
    found = [f"CliFilterPlugins={','.join(plugins)}", script]
    warn, fix = [], []
    if b"hpccont" not in text:
        warn.append(f"{script} is not hpccont's filter")
        fix.append("merge spank_plugin/cli_filter.lua into the site's filter")
    else:
        shipped = ctx.shipped_cli_filter
        if shipped is None:   # the package's copy, else a source tree's
            pkg = os.path.dirname(os.path.abspath(__file__))
            shipped = next((c for c in (
                os.path.join(pkg, "data", "spank_plugin", "cli_filter.lua"),
                os.path.join(os.path.dirname(pkg), "spank_plugin", "cli_filter.lua"))
                if os.path.isfile(c)), "")
        try:
            with open(shipped, "rb") as f:
                if f.read() != text:
                    warn.append(f"differs from {shipped}")
                    fix.append("rerun 'hpccont slurm install-plugin' after an hpccont upgrade")
        except OSError:
            pass
    # The filter needs lua-posix, for the Lua that Slurm's cli_filter_lua.so is linked with.
    lua_so = next((os.path.join(d, "cli_filter_lua.so") for d in ctx.plugin_dirs()
                   if os.path.exists(os.path.join(d, "cli_filter_lua.so"))), None)
    if lua_so is None:
        return Result(FAIL, name, f"cli_filter_lua.so not in {':'.join(ctx.plugin_dirs())}",
                      "install Slurm's Lua plugins (Debian: slurm-client; RPM: slurm built "
                      "with lua) or set PluginDir")
    from .elf import file_dynamic
    dyn = file_dynamic(lua_so)
    lua = next((m.group(1) for n in (dyn.needed if dyn else [])
                for m in [re.match(r"liblua-?(5\.\d)", n)] if m), None)
    if lua:
        dirs = [d.format(lua=lua) for d in ctx.lua_dirs]
        if not any(glob.glob(os.path.join(d, pat)) for d in dirs
                   for pat in ("posix.so", "posix.lua", "posix/init.lua", "posix/*.so")):
            return Result(FAIL, name, "; ".join(found) + f"; no lua-posix for Lua {lua} "
                          f"(the filter refuses --container without it)",
                          f"install lua-posix for Lua {lua} on every submit host")
        found.append(f"lua-posix for Lua {lua}")
    params = [p.strip() for p in (conf.get("LaunchParameters") or "").split(",")]
    if "use_interactive_step" not in params:
        warn.append("LaunchParameters lacks use_interactive_step: 'salloc --container' "
                    "does not reach the filter")
        fix.append("add LaunchParameters=use_interactive_step")
    if warn:
        return Result(WARN, name, "; ".join(found + warn), "; ".join(fix))
    return Result(OK, name, "; ".join(found))


def _mounts(ctx: Context) -> List[Tuple[str, str]]:
    """(mount point, fs type) from mountinfo, longest mount point first."""
    out = []
    try:
        with open(ctx.mountinfo) as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) >= 5 and right:
                    point = fields[4].replace("\\040", " ")
                    out.append((point, right.split()[0]))
    except OSError:
        pass
    return sorted(out, key=lambda m: len(m[0]), reverse=True)


def _fstype(ctx: Context, path: str) -> str:
    real = os.path.realpath(path)
    for point, fs in _mounts(ctx):
        if real == point or real.startswith(point.rstrip("/") + "/"):
            return fs
    return ""


def _slurmds_here(ctx: Context, conf_path: str) -> int:
    """slurmd processes on this machine that use ``conf_path``."""
    count = 0
    real = os.path.realpath(conf_path)
    try:
        pids = [p for p in os.listdir(ctx.proc) if p.isdigit()]
    except OSError:
        return 0
    for pid in pids:
        try:
            with open(os.path.join(ctx.proc, pid, "cmdline"), "rb") as f:
                argv = [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if not argv or os.path.basename(argv[0]) != "slurmd":
            continue
        conf = "/etc/slurm/slurm.conf"
        if "-f" in argv[:-1]:
            conf = argv[argv.index("-f") + 1]
        if os.path.realpath(conf) == real:
            count += 1
    return count


def check_spool_tmpfs(ctx: Context) -> Result:
    name = "spool-tmpfs"
    skip = _slurm_missing(ctx, name)
    if skip:
        return skip
    conf = ctx.slurm()
    warn: List[str] = []
    fixes: List[str] = []
    spool_raw = conf.get("SlurmdSpoolDir")
    if spool_raw:
        spool, spool_note = ctx.expand(spool_raw), ""
    else:
        spool = next((d for d in SPOOL_DEFAULTS if os.path.isdir(d)), SPOOL_DEFAULTS[0])
        spool_note = " (default)"
    tmpfs_raw = conf.get("TmpFS") or "/tmp"
    tmpfs = ctx.expand(tmpfs_raw)
    found = [f"SlurmdSpoolDir={spool}{spool_note}", f"TmpFS={tmpfs}"]
    if not os.path.isdir(spool):
        if ctx.is_root or os.path.exists(os.path.dirname(spool)):
            warn.append(f"SlurmdSpoolDir {spool} does not exist")
            fixes.append(f"create {spool} (root, 0755) or fix SlurmdSpoolDir")
    if not os.path.isdir(tmpfs):
        warn.append(f"TmpFS {tmpfs} does not exist")
        fixes.append(f"create {tmpfs} or fix TmpFS")
    for label, path in (("TmpFS", tmpfs), ("SlurmdSpoolDir", spool)):
        fs = _fstype(ctx, path) if os.path.exists(path) else ""
        if fs in NETWORK_FS:
            warn.append(f"{label} {path} is on {fs}, shared between nodes")
            fixes.append(f"put {label} on a node-local filesystem")
    slurmds = _slurmds_here(ctx, conf.path)
    if slurmds > 1:
        for label, raw in (("TmpFS", tmpfs_raw), ("SlurmdSpoolDir", spool_raw or "")):
            if "%n" not in raw and "%h" not in raw:
                warn.append(f"{slurmds} slurmd on this machine share {label} "
                            f"{ctx.expand(raw) or spool} (PMIx steps fail: 'Cannot create "
                            "client cli tmpdir')")
                fixes.append(f"give each node its own {label} with %n")
    if warn:
        return Result(WARN, name, "; ".join(found + warn), "; ".join(dict.fromkeys(fixes)))
    return Result(OK, name, ", ".join(found) + ", node-local")


def check_pmix(ctx: Context) -> Result:
    name = "pmix"
    skip = _slurm_missing(ctx, name)
    if skip:
        return skip
    dirs = ctx.plugin_dirs()
    plugins = sorted({p for d in dirs for p in glob.glob(os.path.join(d, "mpi_pmix*.so"))})
    if not plugins:
        return Result(WARN, name, f"no mpi_pmix*.so in {':'.join(dirs)}: srun --mpi=pmix "
                      "unavailable (Open MPI programs under srun)",
                      "install Slurm's PMIx plugin (Debian: part of slurmd; RPM: slurm-pmi / "
                      "built --with-pmix)")
    real = os.path.realpath(plugins[0])
    # Slurm's PMIx plugin dlopen()s libpmix.so from the directory it was configured with.
    try:
        with open(real, "rb") as f:
            data = f.read()
    except OSError as e:
        return Result(WARN, name, f"{real}: {e.strerror}", "run doctor as root")
    wanted_dirs = [s.decode() for s in re.findall(rb"(/[\w./+-]*pmix[\w./+-]*)\0", data)
                   if not s.endswith(b".so") and b"%" not in s]
    candidates = [os.path.join(d, "libpmix.so") for d in wanted_dirs]
    candidates += [os.path.join(d, "libpmix.so") for d in ctx.lib_dirs]
    lib = next((c for c in candidates if os.path.exists(c)), None)
    found = f"{', '.join(os.path.basename(p) for p in plugins)} in {os.path.dirname(plugins[0])}"
    mpi_default = ctx.slurm().get("MpiDefault") or "none"
    if lib is None:
        where = wanted_dirs[0] if wanted_dirs else "the library directories"
        return Result(FAIL, name, f"{found}, but no libpmix.so in {where}: srun --mpi=pmix "
                      "hangs and leaves the job in CG",
                      "install the PMIx development package (Debian: libpmix-dev; RPM: "
                      "pmix-devel) and restart slurmd")
    return Result(OK, name, f"{found}; {os.path.realpath(lib)}; MpiDefault={mpi_default}")


def check_host_mpi(ctx: Context) -> Result:
    name = "host-mpi"
    from .host.mpi import HostView, discover_host
    cfg, _ = ctx.config()
    view = HostView() if ctx.mpi_root == "/" else HostView(root=ctx.mpi_root, use_commands=False)
    hosts = discover_host(cfg, ctx.environ, view)
    listed = cfg["mpi"]["installations"]
    if listed and not any(h.source.startswith("site config") for h in hosts):
        return Result(FAIL, name, f"mpi.installations {listed} has no libmpi.so.40/12",
                      "fix mpi.installations (prefixes, lib directories or library files)")
    if not hosts:
        return Result(WARN, name, "no host MPI (mpicc -show, ld.so cache): --mpi bind is "
                      "unavailable, hybrid mode still works",
                      "install the site MPI or list it in mpi.installations")
    pmi = hosts[0].pmi
    return Result(OK, name, "; ".join(f"{h.describe()} [{h.source}]" for h in hosts)
                  + f"; PMI: {', '.join(pmi) or 'none'}")


_NVML_OK = 0


def check_nvml(ctx: Context) -> Result:
    name = "nvml"
    import ctypes
    devices = sorted(glob.glob(os.path.join(ctx.dev_dir, "nvidia[0-9]*")))
    ctl = os.path.exists(os.path.join(ctx.dev_dir, "nvidiactl"))
    try:
        lib = ctypes.CDLL(ctx.nvml_lib)
    except OSError as e:
        if ctl or devices:
            return Result(WARN, name, f"{ctx.dev_dir}/nvidia* exist but {ctx.nvml_lib} does "
                          f"not load ({e}): --nv runs without GPUs",
                          "install the NVIDIA driver's user-space libraries matching the "
                          "kernel module")
        return Result(SKIP, name, f"no NVIDIA driver ({ctx.nvml_lib} not loadable)")
    init = getattr(lib, "nvmlInit_v2", None) or getattr(lib, "nvmlInit", None)
    if init is None:
        return Result(WARN, name, f"{ctx.nvml_lib} loads but has no nvmlInit",
                      "reinstall the NVIDIA driver")
    err = getattr(lib, "nvmlErrorString", None)
    if err is not None:
        err.restype = ctypes.c_char_p

    def why(code: int) -> str:
        return err(code).decode() if err is not None else f"error {code}"
    rc = init()
    if rc != _NVML_OK:
        return Result(WARN, name, f"{ctx.nvml_lib} loads but nvmlInit fails: {why(rc)}",
                      "check the kernel module (nvidia-smi, dmesg) and nvidia-persistenced")
    try:
        buf = ctypes.create_string_buffer(96)
        version = "unknown"
        if lib.nvmlSystemGetDriverVersion(buf, 96) == _NVML_OK:
            version = buf.value.decode()
        count = ctypes.c_uint(0)
        count_fn = getattr(lib, "nvmlDeviceGetCount_v2", None) or lib.nvmlDeviceGetCount
        gpus = count.value if count_fn(ctypes.byref(count)) == _NVML_OK else "?"
    finally:
        lib.nvmlShutdown()
    found = f"driver {version}, {gpus} GPU(s) through {ctx.nvml_lib}"
    try:
        import pynvml  # noqa: F401  (what --nv uses)
    except ImportError:
        return Result(WARN, name, found + "; but nvidia-ml-py (pynvml) is not importable by "
                      "hpccont: --nv runs without GPUs",
                      "pip install nvidia-ml-py into hpccont's environment")
    return Result(OK, name, found)


# name -> check, in the order they run and print.
CHECKS: Dict[str, Callable[[Context], Result]] = {
    "userns": check_userns,
    "fuse-device": check_fuse_device,
    "squashfuse": check_squashfuse,
    "fuse-overlayfs": check_fuse_overlayfs,
    "site-config": check_site_config,
    "bytecode": check_bytecode,
    "launcher": check_launcher,
    "fuse-cache": check_fuse_cache,
    "slurm-conf": check_slurm_conf,
    "plugstack": check_plugstack,
    "spank-plugin": check_spank_plugin,
    "step-builder": check_step_builder,
    "account-writer": check_account_writer,
    "cli-filter": check_cli_filter,
    "spool-tmpfs": check_spool_tmpfs,
    "pmix": check_pmix,
    "host-mpi": check_host_mpi,
    "nvml": check_nvml,
}


def run_checks(ctx: Context, names: Optional[Sequence[str]] = None,
               debug: bool = False) -> List[Result]:
    """Run the checks (all, or the named ones); a check that crashes is a FAIL, not a crash."""
    results = []
    for name in names or list(CHECKS):
        try:
            results.append(CHECKS[name](ctx))
        except Exception as e:  # a bug in a check must not hide the other checks
            results.append(Result(FAIL, name, f"check failed: {type(e).__name__}: {e}",
                                  "report this (rerun with --debug for the traceback)"))
            if debug:
                raise
    return results


def exit_status(results: Sequence[Result]) -> int:
    return 1 if any(r.status == FAIL for r in results) else 0


# -------------------------------------------------------------------------------------------
# hpccont doctor [--json] [--slurm-conf FILE] [--node NAME] [--only NAME,...]

def main(name: str, argv: List[str]) -> int:
    import argparse
    import json
    import sys
    from .errors import UsageError

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise UsageError(f"{message} (see 'hpccont doctor --help')")

    p = Parser(prog="hpccont doctor",
               description="Check this node's set-up for hpccont: one line per check, "
                           "OK/WARN/FAIL/SKIP; exit status 1 if any check FAILs.")
    p.add_argument("--json", action="store_true", help="the results as one JSON object")
    p.add_argument("--slurm-conf", metavar="FILE",
                   help="slurm.conf to check (default: $SLURM_CONF, else /etc/slurm/slurm.conf)")
    p.add_argument("--node", metavar="NAME", help="node name for %%n in slurm.conf paths "
                   "(default: the short host name)")
    p.add_argument("--only", metavar="NAME[,NAME]", action="append", default=[],
                   help=f"run only these checks ({', '.join(CHECKS)})")
    p.add_argument("--no-probe", action="store_true",
                   help="do not try to create a user namespace")
    p.add_argument("--debug", action="store_true", help="tracebacks of failing checks")
    ns = p.parse_args(argv)
    names = [n for group in ns.only for n in group.split(",") if n]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise UsageError(f"unknown check {unknown[0]!r} (known: {', '.join(CHECKS)})")
    ctx = Context(slurm_conf=ns.slurm_conf, probe_userns=not ns.no_probe)
    if ns.node:
        ctx.node = ns.node
    results = run_checks(ctx, names, debug=ns.debug)
    status = exit_status(results)
    counts = {s: sum(r.status == s for r in results) for s in (OK, WARN, FAIL, SKIP)}
    if ns.json:
        json.dump({"ok": status == 0, "slurm_conf": ctx.slurm_conf, "node": ctx.node,
                   "euid": ctx.euid, "counts": counts,
                   "checks": [r.as_dict() for r in results]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        width = max(len(r.name) for r in results)
        for r in results:
            sys.stdout.write(r.line(width) + "\n")
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        sys.stderr.write(f"hpccont doctor: {summary}\n")
    return status
