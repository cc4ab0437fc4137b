"""``hpccont instance start|list|stop``."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .. import config
from ..errors import LaunchError, UsageError
from ..runtime import instances
from ..runtime.launch import current_dir
from .launch import OPTIONS, build_request


def main(name: str, argv: list) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write("usage: hpccont instance start [options] IMAGE NAME [ARGS]\n"
                         "       hpccont instance list [--json]\n"
                         "       hpccont instance stop NAME... | --all\n")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    cfg = config.load()
    if cmd == "start":
        return start(rest, cfg)
    if cmd == "list":
        return list_(rest, cfg)
    if cmd == "stop":
        return stop(rest, cfg)
    raise UsageError(f"unknown instance command {cmd!r} (start, list, stop)")


def _split_start_args(argv: list) -> tuple:
    """Options as for exec, then IMAGE NAME, then the startscript's arguments."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        opt = argv[i].split("=", 1)[0]
        takes_value = OPTIONS.get(opt, ("", "flag"))[1] != "flag" and "=" not in argv[i]
        i += 2 if takes_value else 1
    if len(argv) < i + 2:
        raise UsageError("usage: hpccont instance start [options] IMAGE NAME [ARGS]")
    return argv[:i] + [argv[i]] + argv[i + 2:], argv[i + 1]


def start(argv: list, cfg: dict) -> int:
    from ..runtime.plan import make_plan
    launch_argv, name = _split_start_args(argv)
    existing = instances.read(cfg, name)
    if existing and instances.alive(existing):
        raise LaunchError(f"instance {name!r} is already running (image {existing['image']})")
    req = build_request("start", launch_argv)
    req.join = instances.join_key(name)
    req.env.update(instances.instance_env(name))
    plan = make_plan(req, cfg, os.environ, current_dir())
    logdir = os.path.join(os.path.expanduser("~"), ".local", "share", "hpccont", "instances")
    os.makedirs(logdir, exist_ok=True)
    logs = {"out": os.path.join(logdir, f"{name}.out"), "err": os.path.join(logdir, f"{name}.err")}
    child = os.fork()
    if child == 0:
        _run_startscript(plan, cfg, logs)
    return _wait_started(cfg, plan, name, child, logs)


def _run_startscript(plan, cfg, logs) -> None:
    """Child: detach from the terminal, log to files, become the instance's first process."""
    from ..runtime.join import apply_joined
    code = 255
    try:
        os.setsid()
        fd_in = os.open("/dev/null", os.O_RDONLY)
        fd_out = os.open(logs["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        fd_err = os.open(logs["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        for src, dst in ((fd_in, 0), (fd_out, 1), (fd_err, 2)):
            os.dup2(src, dst)
        apply_joined(plan, cfg, persistent=True)
    except BaseException as e:  # reported through the error log
        os.write(2, f"hpccont instance: {e}\n".encode())
    os._exit(code)


def _wait_started(cfg, plan, name, child, logs) -> int:
    from ..runtime.join import keeper_pid
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pid = keeper_pid(plan, cfg)
        if pid is not None:
            instances.record(cfg, name, plan.image.path, pid, logs)
            print(f"instance started: {name} (keeper {pid})")
            return 0
        done, status = os.waitpid(child, os.WNOHANG)
        if done and pid is None:
            try:
                last = open(logs["err"]).read().strip().splitlines()[-1]
            except (OSError, IndexError):
                last = "startscript exited"
            raise LaunchError(f"instance {name} failed to start: {last}")
        time.sleep(0.02)
    raise LaunchError(f"instance {name} did not start within 30 s")


def list_(argv: list, cfg: dict) -> int:
    p = argparse.ArgumentParser(prog="hpccont instance list")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = instances.entries(cfg)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"{'NAME':20} {'PID':>8} {'STATE':8} IMAGE")
    for e in rows:
        print(f"{e['name']:20} {e['keeper']:>8} {'running' if e['running'] else 'gone':8} {e['image']}")
    return 0


def stop(argv: list, cfg: dict) -> int:
    p = argparse.ArgumentParser(prog="hpccont instance stop")
    p.add_argument("names", nargs="*")
    p.add_argument("--all", "-a", action="store_true")
    p.add_argument("--timeout", type=float, default=instances.STOP_GRACE_S)
    args = p.parse_args(argv)
    names = [e["name"] for e in instances.entries(cfg)] if args.all else args.names
    if not names and not args.all:
        raise UsageError("name an instance to stop, or --all")
    for n in names:
        instances.stop(cfg, n, args.timeout)
        print(f"instance stopped: {n}")
    return 0
