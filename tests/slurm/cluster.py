"""A real one-node Slurm cluster on localhost for tests and benchmarks.

munged, slurmctld and slurmd (Debian's 22.05 packages) run with a private configuration
directory, so nothing under /etc/slurm is touched: daemons get ``-f CONF`` and clients
``SLURM_CONF``.  Only one cluster may run on the machine at a time (they would share ports and
cgroup roots), so ``start`` takes an exclusive lock on ``/tmp/hpccont-slurm.lock`` and holds it
until ``stop``.

Site layout, as on a real node and nothing of it under /tmp (every container binds /tmp, so a
spool or TmpFS there would hide what a site's layout needs): one directory per run under
``/var/lib/hpccont-test`` (``SITE_ROOT``)::

    RUN/etc/        slurm.conf, cgroup.conf, plugstack.conf, cli_filter.lua (like /etc/slurm)
    RUN/slurmd/     SlurmdSpoolDir, 0755 like Debian's /var/lib/slurm/slurmd (batch scripts,
                    PMIx server directories)
    RUN/slurmctld/  StateSaveLocation
    RUN/run/        pid files
    RUN/tmpfs/      TmpFS (1777): PMIx client directories
    /var/log/hpccont-test/RUN/   daemon logs (``log_dir``)

``stop`` removes both (set ``HPCCONT_TEST_KEEP_LOGS=1`` to keep the logs).

The daemons run in the foreground (``-D``) as children of this process: PID 1 here reaps
orphans slowly, and waiting on our own children is the only reliable "it has stopped".
"""
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

LOCK_FILE = "/tmp/hpccont-slurm.lock"
MUNGE_SOCKET = "/run/munge/munge.socket.2"
SITE_ROOT = Path(os.environ.get("HPCCONT_TEST_SITE_ROOT", "/var/lib/hpccont-test"))
LOG_ROOT = Path(os.environ.get("HPCCONT_TEST_LOG_ROOT", "/var/log/hpccont-test"))


def site_dir(prefix: str, root: Path = SITE_ROOT, mode: int = 0o755) -> Path:
    """A new directory ``root/PREFIXxxxx`` (``root`` made 0755 if missing)."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    d.chmod(mode)
    return d


def remove_tree(path: Optional[Path]) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)

SLURM_CONF = """\
ClusterName=hpccont
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={dir}/slurmctld
SlurmdSpoolDir={dir}/slurmd
TmpFS={dir}/tmpfs
SlurmctldPidFile={dir}/run/slurmctld.pid
SlurmdPidFile={dir}/run/slurmd.pid
SlurmctldLogFile={log_dir}/slurmctld.log
SlurmdLogFile={log_dir}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# cgroup v1 here: "autodetect" in cgroup.conf; cgroup/v2 refuses the hybrid layout.
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup,task/affinity
JobAcctGatherType=jobacct_gather/cgroup
JobAcctGatherFrequency=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait=5
InactiveLimit=0
MinJobAge=300
PlugStackConfig={dir}/etc/plugstack.conf
{cli_filter}
# salloc runs no cli_filter for --container without the interactive step.
LaunchParameters=use_interactive_step
NodeName={host} CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""

CGROUP_CONF = """\
CgroupPlugin=autodetect
ConstrainCores=no
ConstrainRAMSpace=no
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone: /proc/PID/stat state Z)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@dataclass
class SlurmCluster:
    """Configuration directory + the daemons started for it."""
    plugstack: str = ""                       # plugstack.conf contents
    cli_filter: Optional[str] = None          # path of a cli_filter.lua to install, or None
    dir: Path = field(default_factory=lambda: site_dir("slurm-"))
    host: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    procs: Dict[str, subprocess.Popen] = field(default_factory=dict)
    lock_file: str = LOCK_FILE
    _lock: Optional[object] = None
    _started_munge: bool = False

    @property
    def etc(self) -> Path:
        return self.dir / "etc"

    @property
    def conf(self) -> Path:
        return self.etc / "slurm.conf"

    @property
    def log_dir(self) -> Path:
        return LOG_ROOT / self.dir.name

    @property
    def env(self) -> Dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    # -- configuration ------------------------------------------------------------------------
    def make_dirs(self) -> None:
        self.dir.chmod(0o755)
        for sub, mode in (("etc", 0o755), ("slurmd", 0o755), ("slurmctld", 0o700),
                          ("run", 0o755), ("tmpfs", 0o1777)):
            (self.dir / sub).mkdir(exist_ok=True)
            (self.dir / sub).chmod(mode)
        LOG_ROOT.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(mode=0o755, exist_ok=True)

    def install_cli_filter(self) -> str:
        """Copy the cli_filter next to slurm.conf; the slurm.conf line that enables it."""
        if not self.cli_filter:
            return ""
        shutil.copy(self.cli_filter, self.etc / "cli_filter.lua")
        return "CliFilterPlugins=cli_filter/lua"

    def write_config(self) -> None:
        self.make_dirs()
        filt = self.install_cli_filter()
        self.conf.write_text(SLURM_CONF.format(
            host=self.host, dir=self.dir, log_dir=self.log_dir, cpus=os.cpu_count() or 1,
            cli_filter=filt, ctld_port=_free_port(), slurmd_port=_free_port()))
        (self.etc / "cgroup.conf").write_text(CGROUP_CONF)
        self.set_plugstack(self.plugstack)
        for f in self.etc.iterdir():
            if f.is_file():
                f.chmod(0o644)

    def set_plugstack(self, text: str) -> None:
        """slurmstepd reads plugstack.conf at every step start, clients at every run."""
        self.plugstack = text
        p = self.etc / "plugstack.conf"
        p.write_text(text)
        p.chmod(0o644)

    # -- daemons ------------------------------------------------------------------------------
    def start(self, timeout: float = 30, lock_wait: float = 900) -> "SlurmCluster":
        self._take_lock(lock_wait)
        try:
            self.write_config()
            self._start_munge()
            self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-i", "-f", str(self.conf)])
            self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", self.host])
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _take_lock(self, wait: float) -> None:
        """Wait for another test session's cluster to go away (suites run side by side)."""
        self._lock = open(self.lock_file, "a")
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self._lock.close()
                    self._lock = None
                    raise RuntimeError(f"another Slurm test cluster is running ({self.lock_file} "
                                       f"stayed locked for {wait:.0f}s)")
                time.sleep(0.5)

    def _start_munge(self) -> None:
        if self._munge_works():
            return
        os.makedirs("/run/munge", exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        os.chmod("/run/munge", 0o755)
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
        self._started_munge = True
        for _ in range(100):
            if self._munge_works():
                return
            time.sleep(0.05)
        raise RuntimeError("munged did not start")

    @staticmethod
    def _munge_works() -> bool:
        if not os.path.exists(MUNGE_SOCKET):
            return False
        r = subprocess.run("munge -n | unmunge", shell=True, capture_output=True)
        return r.returncode == 0

    def _spawn(self, name: str, argv: List[str]) -> None:
        out = open(self.log_dir / f"{name}.out", "w")
        self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited ({p.returncode}): {self.log_tail(name)}")
            r = self.run(["sinfo", "-h", "-N", "-o", "%T"])
            state = r.stdout.strip()
            if r.returncode == 0 and state.startswith("idle"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"node not idle after {timeout}s (state {state!r}): "
                           f"{self.log_tail('slurmd')}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        text = ""
        for suffix in (".log", ".out"):
            p = self.log_dir / f"{name}{suffix}"
            if p.exists():
                text += "".join(p.read_text(errors="replace").splitlines(True)[-lines:])
        return text

    def stop(self) -> None:
        """Cancel what is left, stop the daemons, release the lock.  Safe to call twice."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run(["scancel", "--full", "-u", "root"], timeout=10)
            self.run(["scancel", "--full", "--state=RUNNING"], timeout=10)
        for name in ("slurmd", "slurmctld"):
            p = self.procs.pop(name, None)
            if p is None:
                continue
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        self._kill_stepds()
        if self._started_munge:
            self._stop_munge()
        self.remove_dirs()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def remove_dirs(self) -> None:
        """The run's directory and, unless HPCCONT_TEST_KEEP_LOGS is set, its logs."""
        remove_tree(self.dir)
        if not os.environ.get("HPCCONT_TEST_KEEP_LOGS"):
            remove_tree(self.log_dir)

    def _kill_stepds(self) -> None:
        """slurmstepd processes of this cluster outlive slurmd; end the ones still there."""
        needle = str(self.dir).encode()
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                env = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"slurmstepd") and needle in env:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _stop_munge(self) -> None:
        pidfile = Path("/run/munge/munged.pid")
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        for _ in range(100):
            if not _alive(pid):
                return
            time.sleep(0.05)

    # -- clients ------------------------------------------------------------------------------
    def run(self, argv: List[str], env: Optional[Dict[str, str]] = None, timeout: float = 60,
            **kw) -> subprocess.CompletedProcess:
        """A Slurm client command as root against this cluster."""
        e = dict(os.environ)
        e.update(self.env)
        if env:
            e.update(env)
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(argv, env=e, timeout=timeout, **kw)
