"""Named, long-running containers: ``hpccont instance start|list|stop`` and ``instance://NAME``.

An instance is a joined container (see join.py) whose keeper is persistent: it stays until
``instance stop``, whatever its startscript does.  ``exec instance://NAME CMD`` joins it, so
commands see the same mounts, /tmp tmpfs (with --contain) and processes' files.  The registry
is one JSON file per instance in the user's state directory; nothing runs as a daemon apart
from the keeper itself, which stays in the cgroup of whoever started it.
"""
from __future__ import annotations

import json
import os
import signal
import time

from ..errors import LaunchError, UsageError
from . import join

PREFIX = "instance://"
STOP_GRACE_S = 5.0


def registry_path(cfg: dict, name: str) -> str:
    if not name or "/" in name or name.startswith("."):
        raise UsageError(f"invalid instance name {name!r}")
    return os.path.join(join.state_dir(cfg), f"instance-{name}.json")


def join_key(name: str) -> str:
    return f"instance:{name}"


def read(cfg: dict, name: str) -> dict | None:
    try:
        with open(registry_path(cfg, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def alive(entry: dict) -> bool:
    try:
        with open(f"/proc/{entry['keeper']}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19] == entry["keeper_start"]
    except (OSError, KeyError, IndexError):
        return False


def attach(req, cfg: dict):
    """``instance://NAME`` as an image: the instance's image, joined to its container."""
    name = req.image[len(PREFIX):]
    entry = read(cfg, name)
    if entry is None or not alive(entry):
        raise LaunchError(f"no running instance named {name!r} (see 'hpccont instance list')")
    req.image = entry["image"]
    req.join = join_key(name)
    req.env.update(instance_env(name))
    return req


def instance_env(name: str) -> dict:
    """What Apptainer sets in an instance's processes (the startscript and exec instance://)."""
    return {"APPTAINER_INSTANCE": name, "SINGULARITY_INSTANCE": name}


def record(cfg: dict, name: str, image: str, keeper: int, logs: dict) -> dict:
    with open(f"/proc/{keeper}/stat") as f:
        start = f.read().rsplit(")", 1)[1].split()[19]
    entry = {"name": name, "image": image, "keeper": keeper, "keeper_start": start,
             "started": time.time(), "logs": logs}
    path = registry_path(cfg, name)
    with open(path + ".tmp", "w") as f:
        json.dump(entry, f)
    os.replace(path + ".tmp", path)
    return entry


def entries(cfg: dict) -> list:
    d = join.state_dir(cfg)
    out = []
    for fn in sorted(os.listdir(d)):
        if fn.startswith("instance-") and fn.endswith(".json"):
            entry = read(cfg, fn[len("instance-"):-len(".json")])
            if entry is not None:
                entry["running"] = alive(entry)
                out.append(entry)
    return out


def stop(cfg: dict, name: str, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM every process of the instance, SIGKILL what is left after ``grace`` seconds."""
    entry = read(cfg, name)
    if entry is None:
        raise LaunchError(f"no instance named {name!r}")
    if alive(entry):
        pids = join.members(entry["keeper"])
        _signal_all(pids, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_running(p) for p in pids):
            time.sleep(0.05)
        _signal_all([p for p in pids if _running(p)], signal.SIGKILL)
    os.unlink(registry_path(cfg, name))


def _signal_all(pids: list, sig: int) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def _running(pid: int) -> bool:
    """Not gone and not a zombie (PID 1 may be slow to reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
