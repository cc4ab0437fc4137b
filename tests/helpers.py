"""Plain helpers shared by the test suites (imported by conftest files and tests).

Everything here uses real components: busybox-static, mksquashfs, useradd, runuser.
"""
import os
import pwd
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEST_USER = "hpcuser"
BUSYBOX = shutil.which("busybox") or "/bin/busybox"

RUNSCRIPT = """#!/bin/sh
echo "runscript args: $*"
"""


def make_busybox_rootfs(root: Path, runscript: str = RUNSCRIPT, hostname: str = "container") -> Path:
    """A tiny but complete rootfs: busybox + applet links, /etc files, Apptainer metadata layout."""
    root.mkdir(parents=True, exist_ok=True)
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "var/tmp", "proc", "sys", "dev",
              "home", "root", "opt", ".singularity.d/env", ".singularity.d/libs", ".singularity.d/actions"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for a in applets:
        link = root / "bin" / a
        if a != "busybox" and not link.exists():
            link.symlink_to("busybox")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "etc/hostname").write_text(hostname + "\n")
    sd = root / ".singularity.d"
    (sd / "runscript").write_text(runscript)
    (sd / "test").write_text("#!/bin/sh\necho test-ok\nexit 0\n")
    (sd / "startscript").write_text("#!/bin/sh\n")
    (sd / "env/90-environment.sh").write_text(
        "#!/bin/sh\nexport IMAGE_VAR=from-image\nexport PATH=/bin:/usr/bin:/sbin:/usr/sbin\n")
    (sd / "labels.json").write_text('{\n    "org.label-schema.name": "busybox-test"\n}\n')
    for f in ("runscript", "test", "startscript", "env/90-environment.sh"):
        os.chmod(sd / f, 0o755)
    (root / "singularity").symlink_to(".singularity.d/runscript")
    return root


def mksquashfs(src: Path, out: Path, comp: str = "gzip") -> Path:
    subprocess.run(["mksquashfs", str(src), str(out), "-noappend", "-quiet", "-comp", comp,
                    "-all-root", "-no-progress"], check=True, stdout=subprocess.DEVNULL)
    return out


def ensure_test_user(name: str = TEST_USER) -> pwd.struct_passwd:
    """Create the unprivileged test user once (needs root).  /dev/fuse opened for users as udev would."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
        pw = pwd.getpwnam(name)
    if os.path.exists("/dev/fuse"):
        mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
        if mode != 0o666:
            os.chmod("/dev/fuse", 0o666)
    return pw


def as_user(argv, user: str = TEST_USER, env=None, **kw) -> subprocess.CompletedProcess:
    """Run argv as ``user`` with a clean login-like environment (runuser, no PAM session needed)."""
    pw = pwd.getpwnam(user)
    base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": pw.pw_dir, "USER": user,
            "LOGNAME": user, "LANG": "C.UTF-8"}
    if env:
        base.update(env)
    cmd = ["runuser", "-u", user, "--", "env", "-i"] + [f"{k}={v}" for k, v in base.items()] + list(argv)
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 120)
    return subprocess.run(cmd, **kw)


def copy_package(libdir: Path) -> Path:
    """This tree's ``hpccont/`` under ``libdir``, byte-compiled as every install is (pip, make
    install).  Uncompiled, a module that only the user's programs import would be compiled
    from source at every launch (the user cannot write ``__pycache__`` there): a Slurm step
    measured ~50 ms slower that way.  Returns ``libdir``."""
    import shutil
    shutil.copytree(REPO / "hpccont", libdir / "hpccont",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(libdir)], check=True,
                   stdout=subprocess.DEVNULL)
    return libdir


def write_launchers(bindir: Path, libdir: Path, python: str = sys.executable) -> dict:
    """Entry-point scripts exactly as ``make install`` writes them, running the package in ``libdir``."""
    import sysconfig
    sys.path.insert(0, str(REPO))
    from hpccont.cli.launchers import write_launchers as write
    return write(str(bindir), str(libdir), python, (sysconfig.get_paths()["purelib"],))


def private_copy(image: Path, dest: Path, mode: int = 0o644) -> Path:
    """A copy of ``image`` that is one test's alone (its keepers and recipes are keyed on the
    file), readable by the test user; ``mode`` 0o755 for ``./img.sif``.  Returns ``dest``."""
    shutil.copy(image, dest)
    dest.chmod(mode)
    return dest


def _launcher_target(bindir: Path, target: str, name: str) -> Path:
    """``make -C launcher TARGET O=bindir``, as ``make install`` builds it beside the entry
    points; the built file, made 0755."""
    r = subprocess.run(["make", "-s", "-B", "-C", str(REPO / "launcher"), target, f"O={bindir}"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"building {name} failed: {r.stderr.strip()}")
    (bindir / name).chmod(0o755)
    return bindir / name


def build_fuse_cache(bindir: Path) -> "Path | None":
    """launcher/fusecache.c built into ``bindir`` (the runtime looks beside the entry points);
    None without a compiler or libfuse3's headers."""
    import shutil
    if not shutil.which("cc") or not os.path.isdir("/usr/include/fuse3"):
        return None
    return _launcher_target(bindir, "cache", "hpccont-fusecache.so")


def build_step_builder(bindir: Path) -> "Path | None":
    """launcher/step.c built into ``bindir`` (the SPANK plugin runs it from beside its
    launcher); None without a compiler."""
    import shutil
    if not shutil.which("cc"):
        return None
    return _launcher_target(bindir, "step", "hpccont-step")


def build_account_writer(bindir: Path) -> "Path | None":
    """launcher/account.c built into ``bindir`` (the SPANK plugin runs it, as root, from
    beside its launcher); None without a compiler."""
    import shutil
    if not shutil.which("cc"):
        return None
    return _launcher_target(bindir, "account", "hpccont-account")


def mounts_mentioning(fragment: str) -> list:
    """Host mount table lines mentioning ``fragment`` (to prove nothing was left mounted)."""
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if fragment in line]


def fuse_processes(fragment: str = "") -> list:
    """squashfuse / fuse-overlayfs processes still alive whose command line mentions ``fragment``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if ("squashfuse" in cmd or "fuse-overlayfs" in cmd) and fragment in cmd:
            found.append((int(pid), cmd))
    return found


DEBOOTSTRAP_CACHE = Path(os.environ.get("HPCCONT_TEST_CACHE", "/var/cache/hpccont-tests"))
DEBIAN_MIRROR = os.environ.get("HPCCONT_TEST_MIRROR", "http://deb.debian.org/debian")


def debootstrap_rootfs(name: str, include=(), suite: str = "bookworm") -> Path:
    """A debootstrap minbase tree, built once per machine and reused (keyed by name + packages).

    Parallel callers wait on a lock file instead of building twice.  Returns the tree (read it,
    copy it, or mksquashfs it; do not modify it).
    """
    import fcntl
    import hashlib
    key = hashlib.sha256((suite + " " + " ".join(sorted(include))).encode()).hexdigest()[:10]
    DEBOOTSTRAP_CACHE.mkdir(parents=True, exist_ok=True)
    DEBOOTSTRAP_CACHE.chmod(0o755)
    tree = DEBOOTSTRAP_CACHE / f"{name}-{key}"
    with open(DEBOOTSTRAP_CACHE / f".{name}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (tree / ".complete").exists():
            return tree
        if tree.exists():
            shutil.rmtree(tree)
        cmd = ["debootstrap", "--variant=minbase"]
        if include:
            cmd.append("--include=" + ",".join(include))
        cmd += [suite, str(tree), DEBIAN_MIRROR]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            shutil.rmtree(tree, ignore_errors=True)
            raise RuntimeError(f"debootstrap failed: {r.stdout[-2000:]}{r.stderr[-2000:]}")
        subprocess.run(["chroot", str(tree), "apt-get", "clean"], check=False)
        (tree / ".complete").write_text("ok\n")
    return tree


def admin_comment(cluster, job: str, tries: int = 25) -> "str | None":
    """The job's AdminComment as ``squeue --json`` shows it, once set (the accounting program
    sets it beside the step, so it may land just after srun returns), else what it was."""
    import json
    comments = []
    for _ in range(tries):
        q = json.loads(cluster.run(["squeue", "--json", "--states=all"]).stdout)
        comments = [j.get("admin_comment") for j in q["jobs"] if str(j["job_id"]) == job]
        if comments and comments[0]:
            break
        time.sleep(0.2)
    return comments[0] if comments else None


def accounting_records(log: Path, match, n: int = 1, timeout: float = 20) -> list:
    """The records of the plugin's accounting log (JSON lines) for which ``match(record)`` is
    true, once there are ``n`` of them (or the timeout passed).  The accounting program runs
    beside the step, so its line may land just after srun returns."""
    import json
    import time
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text() if log.exists() else ""
        mine = [r for r in map(json.loads, text.splitlines()) if match(r)]
        if len(mine) >= n or time.monotonic() > deadline:
            return mine
        time.sleep(0.2)
