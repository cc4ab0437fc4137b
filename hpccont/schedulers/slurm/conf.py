"""slurm.conf as a node's processes read it: global keys, node lines, includes, and the node's
own directories (SlurmdSpoolDir and TmpFS, with ``%n``/``%h`` for multi-slurmd hosts).

The step's tasks need two directories Slurm's PMIx plugin makes per step, whose paths reach
``prepare`` in no variable: ``SlurmdSpoolDir/pmix.JOB.STEP`` (the server's rendezvous) and
``TmpFS/spmix_appdir_UID_JOB.STEP`` (the clients').  ``hpccont doctor`` reads the same file.
"""
from __future__ import annotations

import glob
import os
import re
TYPE_CHECKING = False   # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Dict, List, Mapping, Optional, Tuple

# Where a node finds slurm.conf when SLURM_CONF is unset: the packaged path, then the
# configless cache slurmd links there.
DEFAULT_PATHS = ("/etc/slurm/slurm.conf", "/run/slurm/conf/slurm.conf")
# Slurm's own defaults for what slurm.conf may leave out.
DEFAULTS = {"slurmdspooldir": "/var/spool/slurmd", "tmpfs": "/tmp"}

_ENTITIES = ("nodename", "partitionname", "nodeset", "downnodes", "frontendname", "switchname")


class SlurmConf:
    """Global keys (case-insensitive) and node lines of slurm.conf and its includes."""

    def __init__(self, path: str):
        self.path = path
        self.ok = False
        self.error = ""
        self.values: Dict[str, str] = {}
        self.nodes: List[Dict[str, str]] = []

    @property
    def dir(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        return self.values.get(key.lower(), default)

    def list(self, key: str) -> List[str]:
        return [v.strip() for v in (self.get(key) or "").split(",") if v.strip()]

    @classmethod
    def read(cls, path: str) -> "SlurmConf":
        conf = cls(path)
        try:
            conf._read(path, 0)
            conf.ok = True
        except OSError as e:
            conf.error = f"cannot read {path}: {e.strerror}"
        return conf

    def _read(self, path: str, depth: int) -> None:
        with open(path) as f:
            lines = f.read().splitlines()
        for raw in lines:
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line.lower().startswith("include ") and depth < 8:
                target = self.expand_include(line.split(None, 1)[1].strip())
                for inc in sorted(glob.glob(target)):
                    try:
                        self._read(inc, depth + 1)
                    except OSError:
                        pass
                continue
            pairs = _pairs(line)
            if not pairs:
                continue
            if pairs[0][0].lower() in _ENTITIES:
                if pairs[0][0].lower() == "nodename":
                    self.nodes.append({k.lower(): v for k, v in pairs})
                continue
            for k, v in pairs:
                self.values[k.lower()] = v

    def expand_include(self, target: str) -> str:
        return target if os.path.isabs(target) else os.path.join(self.dir, target)


def _pairs(line: str) -> List[Tuple[str, str]]:
    out = []
    for word in re.findall(r'(?:[^\s"]+|"[^"]*")+', line):
        k, sep, v = word.partition("=")
        if sep:
            out.append((k, v.strip('"')))
    return out


def find(environ: Mapping[str, str]) -> Optional[SlurmConf]:
    """The node's slurm.conf (SLURM_CONF, else the default places), or None."""
    for path in ([environ["SLURM_CONF"]] if environ.get("SLURM_CONF") else []) + list(DEFAULT_PATHS):
        conf = SlurmConf.read(path)
        if conf.ok:
            return conf
    return None


def node_dir(conf: SlurmConf, key: str, node: str) -> str:
    """SlurmdSpoolDir or TmpFS for ``node``: ``%n`` is the node name, ``%h`` the host name."""
    value = conf.get(key) or DEFAULTS[key.lower()]
    return value.replace("%n", node).replace("%h", os.uname().nodename.split(".")[0])


def node_name(environ: Mapping[str, str]) -> str:
    return environ.get("SLURMD_NODENAME") or os.uname().nodename.split(".")[0]
