"""A real multi-node Slurm cluster on one machine: one network namespace per node.

Each node is a network namespace (``hpccont-nodeN``) joined by a veth pair to a bridge on the
host (``hpccont-br``) that carries a private 10.250.X.0/24 subnet created here (the first X
no interface of the host already uses); the host is 10.250.X.1 and runs slurmctld, node N is
10.250.X.(10+N) and runs its own slurmd, started as

    nsenter --net=/run/netns/hpccont-nodeN unshare --uts \\
        sh -c 'hostname nodeN && exec slurmd -D -f CONF -N nodeN'

so that each node has its own addresses, ports and host name (not ``ip netns exec``: it
remounts /sys and hides the cgroup v1 mounts).  Nodes share the host's filesystems, as nodes
share /home and a site's image directory, except /tmp: with ``node_local_tmp`` (the default)
slurmd also gets a mount namespace (``unshare --mount --propagation slave``) in which
``RUN/nodetmp/nodeN`` is bound on /tmp, as /tmp is a node's own disk at a site; whatever the
nodes must run (plugin, hpccont, images) must then live outside /tmp, as at a site.  Debian's Slurm allows several slurmd per host
(MULTIPLE_SLURMD): SlurmdSpoolDir, SlurmdPidFile, SlurmdLogFile and TmpFS carry ``%n``, and each
slurmd keeps its cgroups under ``slurm_nodeN``.  Only the addresses created here are ever
contacted.

The cluster has its own munged (its own socket, ``AuthInfo=socket=...``), its own slurmctld
port and its own lock file, so it runs next to the one-node cluster of cluster.py (another test
session may start and stop that one, and its munged, at any time).  ``stop`` takes everything
down again -- jobs, daemons, every process left in a node's namespace (slurmstepd, tasks, the
containers' keepers and FUSE servers), the namespaces, veths, bridge, cgroups and directories --
and runs from an atexit hook too.  ``start`` first removes what a killed earlier run left.
"""
import atexit
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from cluster import (CGROUP_CONF, LOG_ROOT, SITE_ROOT, SlurmCluster, _alive, _free_port,
                     remove_tree, site_dir)

LOCK_FILE = "/run/lock/hpccont-slurm-multinode.lock"
BRIDGE = "hpccont-br"
PREFIX = "hpccont-"             # netns hpccont-nodeN, host-side veth hpccont-vN
DIR_PREFIX = "multinode-"
CGROUP_ROOT = Path("/sys/fs/cgroup")

SLURM_CONF = """\
ClusterName=hpccontmn
SlurmctldHost={host}({ctld_addr})
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={dir}/slurmctld
SlurmdSpoolDir={dir}/slurmd/%n
TmpFS={dir}/tmpfs/%n
SlurmctldPidFile={dir}/run/slurmctld.pid
SlurmdPidFile={dir}/run/slurmd-%n.pid
SlurmctldLogFile={log_dir}/slurmctld.log
SlurmdLogFile={log_dir}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
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
LaunchParameters=use_interactive_step
{nodes}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def _run(argv: List[str], check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")
    return r


def _netns_pids(ns: str) -> List[int]:
    r = _run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in r.stdout.split() if p.isdigit()]


def _kill_and_wait(pids: List[int], seconds: float = 10) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)


def _our_netns() -> List[str]:
    r = _run(["ip", "-o", "netns", "list"], check=False)
    return [line.split()[0] for line in r.stdout.splitlines()
            if line.split() and line.split()[0].startswith(PREFIX + "node")]


def _our_links() -> List[str]:
    r = _run(["ip", "-o", "link", "show"], check=False)
    names = [line.split(":")[1].strip().split("@")[0] for line in r.stdout.splitlines()
             if line.count(":") >= 2]
    return [n for n in names if n == BRIDGE or n.startswith(PREFIX + "v")]


def _remove_cgroups(node: str) -> None:
    """slurmd leaves its (empty) cgroup tree ``slurm_NODE`` in each v1 hierarchy."""
    for ctrl in CGROUP_ROOT.iterdir() if CGROUP_ROOT.is_dir() else ():
        top = ctrl / f"slurm_{node}"
        if not top.is_dir():
            continue
        for d, _subdirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(d)
            except OSError:
                pass


@dataclass
class MultiNodeCluster(SlurmCluster):
    """``nodes`` slurmd, each in its own network namespace, and one slurmctld on the host."""
    nodes: int = 3
    dir: Path = field(default_factory=lambda: site_dir(DIR_PREFIX))
    lock_file: str = LOCK_FILE
    subnet: str = ""                          # "10.250.X", chosen at start
    node_local_tmp: bool = True               # each node's /tmp is its own directory
    node_procs: Dict[str, subprocess.Popen] = field(default_factory=dict)
    _made_network: bool = False
    _atexit: bool = False

    def __post_init__(self) -> None:
        # Who owns the directory: a later run removes it only once this process is gone.
        (self.dir / "owner").write_text(f"{os.getpid()}\n")

    # -- names and addresses -------------------------------------------------------------------
    @property
    def node_names(self) -> List[str]:
        return [f"node{i}" for i in range(1, self.nodes + 1)]

    @staticmethod
    def netns(node: str) -> str:
        return PREFIX + node

    def node_addr(self, node: str) -> str:
        return f"{self.subnet}.{10 + int(node[4:])}"

    @property
    def ctld_addr(self) -> str:
        return f"{self.subnet}.1"

    @property
    def cidr(self) -> str:
        """The cluster's network, e.g. for OMPI_MCA_btl_tcp_if_include."""
        return f"{self.subnet}.0/24"

    @property
    def munge_dir(self) -> Path:
        return self.dir / "run" / "munge"

    @property
    def munge_socket(self) -> Path:
        return self.munge_dir / "munge.socket"

    def spool(self, node: str) -> Path:
        return self.dir / "slurmd" / node

    def tmpfs(self, node: str) -> Path:
        return self.dir / "tmpfs" / node

    def node_tmp(self, node: str) -> Path:
        """What ``node`` sees as /tmp (with ``node_local_tmp``)."""
        return self.dir / "nodetmp" / node

    # -- configuration -------------------------------------------------------------------------
    def write_config(self) -> None:
        self.make_dirs()
        for node in self.node_names:
            self.spool(node).mkdir(mode=0o755, exist_ok=True)
            for d in (self.tmpfs(node), self.node_tmp(node)):
                d.mkdir(parents=True, exist_ok=True)
                d.chmod(0o1777)
        filt = self.install_cli_filter()
        nodes = "\n".join(f"NodeName={n} NodeAddr={self.node_addr(n)} CPUs={os.cpu_count() or 1} "
                          f"State=UNKNOWN" for n in self.node_names)
        self.conf.write_text(SLURM_CONF.format(
            host=self.host, ctld_addr=self.ctld_addr, dir=self.dir, log_dir=self.log_dir,
            munge_socket=self.munge_socket, cli_filter=filt, nodes=nodes,
            ctld_port=_free_port(), slurmd_port=_free_port()))
        (self.etc / "cgroup.conf").write_text(CGROUP_CONF)
        self.set_plugstack(self.plugstack)
        for f in self.etc.iterdir():
            if f.is_file():
                f.chmod(0o644)

    # -- start ---------------------------------------------------------------------------------
    def start(self, timeout: float = 60, lock_wait: float = 900) -> "MultiNodeCluster":
        self._take_lock(lock_wait)
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True
        try:
            self.remove_leftovers()
            self.write_config()
            self._start_own_munge()
            self._make_network()
            self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-i", "-f", str(self.conf)])
            for node in self.node_names:
                self._spawn_node(node)
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_own_munge(self) -> None:
        """A munged of our own: the host's may belong to another session's cluster."""
        import shutil
        self.munge_dir.mkdir(mode=0o755, exist_ok=True)
        shutil.chown(self.munge_dir, "munge", "munge")
        logs = self.log_dir / "munge"
        logs.mkdir(mode=0o755, exist_ok=True)
        shutil.chown(logs, "munge", "munge")
        self._spawn("munged", ["runuser", "-u", "munge", "--", "/usr/sbin/munged", "-F",
                               f"--socket={self.munge_socket}",
                               f"--pid-file={self.munge_dir}/munged.pid",
                               f"--seed-file={self.munge_dir}/munged.seed",
                               f"--log-file={logs}/munged.log"])
        for _ in range(200):
            if self.munge_socket.exists():
                r = subprocess.run(f"munge -n -S {self.munge_socket} | unmunge -S {self.munge_socket}",
                                   shell=True, capture_output=True)
                if r.returncode == 0:
                    return
            if self.procs["munged"].poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"munged did not start: {self.log_tail('munged')}")

    def _free_subnet(self) -> str:
        used = _run(["ip", "-o", "-4", "addr", "show"]).stdout + _run(["ip", "-4", "route"]).stdout
        for x in range(0, 255):
            if f" 10.250.{x}." not in used:
                return f"10.250.{x}"
        raise RuntimeError("no free 10.250.X.0/24 subnet")

    def _make_network(self) -> None:
        self.subnet = self.subnet or self._free_subnet()
        # The config names the addresses: write it again now that they are known.
        self.write_config()
        self._made_network = True
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        _run(["ip", "addr", "add", f"{self.ctld_addr}/24", "dev", BRIDGE])
        _run(["ip", "link", "set", BRIDGE, "up"])
        for node in self.node_names:
            ns, veth = self.netns(node), f"{PREFIX}v{node[4:]}"
            _run(["ip", "netns", "add", ns])
            _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
            _run(["ip", "link", "set", veth, "master", BRIDGE])
            _run(["ip", "link", "set", veth, "up"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{self.node_addr(node)}/24", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])

    def _spawn_node(self, node: str) -> None:
        script = f"hostname {node} && exec slurmd -D -f {self.conf} -N {node}"
        unshare = ["unshare", "--uts"]
        if self.node_local_tmp:
            script = f"mount --bind {self.node_tmp(node)} /tmp && {script}"
            unshare += ["--mount", "--propagation", "slave"]
        argv = ["nsenter", f"--net=/run/netns/{self.netns(node)}", *unshare, "sh", "-c", script]
        out = open(self.log_dir / f"slurmd-{node}.out", "w")
        self.node_procs[node] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        states: Dict[str, str] = {}
        while time.monotonic() < deadline:
            for name, p in list(self.procs.items()) + list(self.node_procs.items()):
                if p.poll() is not None:
                    log = "slurmd-" + name if name.startswith("node") else name
                    raise RuntimeError(f"{name} exited ({p.returncode}): {self.log_tail(log)}")
            r = self.run(["sinfo", "-h", "-N", "-o", "%N %T"])
            states = dict(line.split() for line in r.stdout.splitlines() if len(line.split()) == 2)
            if r.returncode == 0 and all(states.get(n, "").startswith("idle")
                                         for n in self.node_names):
                return
            time.sleep(0.2)
        raise RuntimeError(f"nodes not idle after {timeout}s ({states}): "
                           f"{self.log_tail('slurmctld')}{self.log_tail('slurmd-node1')}")

    # -- where things run ------------------------------------------------------------------------
    def node_pids(self, node: str) -> List[int]:
        """Every process in ``node``'s network namespace (slurmd, slurmstepd, tasks...)."""
        return _netns_pids(self.netns(node))

    def node_of(self, pid: int) -> Optional[str]:
        """The node whose network namespace ``pid`` is in (None: the host's, or gone)."""
        try:
            ino = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            return None
        for node in self.node_names:
            try:
                if os.stat(f"/run/netns/{self.netns(node)}").st_ino == ino:
                    return node
            except OSError:
                pass
        return None

    def in_node(self, node: str, argv: List[str], **kw) -> subprocess.CompletedProcess:
        """Run ``argv`` as root in ``node``'s network namespace."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        return subprocess.run(["nsenter", f"--net=/run/netns/{self.netns(node)}"] + argv, **kw)

    # -- stop ----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Jobs, daemons, node processes, network, cgroups, directories, lock.  Safe to call
        twice, and after a failed start."""
        try:
            ctld = self.procs.get("slurmctld")
            if ctld is not None and ctld.poll() is None:
                for args in (["-u", "root"], ["--state=RUNNING"], ["--state=PENDING"]):
                    try:
                        self.run(["scancel", "--full", *args], timeout=10)
                    except (subprocess.TimeoutExpired, OSError):
                        pass
            for node, p in list(self.node_procs.items()):
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for node, p in list(self.node_procs.items()):
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
                del self.node_procs[node]
            for name in ("slurmctld", "munged"):
                p = self.procs.pop(name, None)
                if p is not None and p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(20)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait(5)
            if self._made_network:
                self._remove_network()
                self._made_network = False
            self._kill_stepds()
            for node in self.node_names:
                _remove_cgroups(node)
        finally:
            self.remove_dirs()
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def _remove_network(self) -> None:
        """What is left in the nodes' namespaces (slurmstepd outlives slurmd; tasks, keepers and
        FUSE servers outlive a killed slurmstepd), then the namespaces, veths and bridge."""
        for ns in _our_netns():
            _kill_and_wait(_netns_pids(ns))
            _run(["ip", "netns", "del", ns], check=False)
        for link in _our_links():
            _run(["ip", "link", "del", link], check=False)

    def remove_leftovers(self) -> None:
        """What an earlier run killed before its stop left behind (we hold the lock, so nothing
        of this kind belongs to a running cluster): processes of its directory, namespaces,
        links, cgroups, directories whose owner is gone."""
        self._remove_network()
        if SITE_ROOT.is_dir():
            for d in SITE_ROOT.glob(DIR_PREFIX + "*"):
                if d == self.dir:
                    continue
                try:
                    owner = int((d / "owner").read_text())
                except (OSError, ValueError):
                    owner = 0
                if owner and _alive(owner):
                    continue
                if not owner and time.time() - d.stat().st_mtime < 600:
                    continue             # just made by a session that waits for the lock
                needle = str(d).encode()
                stale = []
                for pid in filter(str.isdigit, os.listdir("/proc")):
                    try:
                        if needle in Path(f"/proc/{pid}/cmdline").read_bytes():
                            stale.append(int(pid))
                    except OSError:
                        pass
                _kill_and_wait(stale)
                remove_tree(d)
                remove_tree(LOG_ROOT / d.name)
        for node in self.node_names:
            _remove_cgroups(node)
