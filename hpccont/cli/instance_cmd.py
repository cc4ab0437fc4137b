"""``hpccont instance start|run|list|stats|stop``, with Apptainer's options and output."""
from __future__ import annotations

import argparse
import os
import sys
import time

from .. import config
from ..errors import LaunchError, UsageError
from ..runtime import instances
from ..runtime.launch import current_dir
from .launch import OPTIONS, build_request

USAGE = """usage: hpccont instance start [options] IMAGE NAME [STARTSCRIPT ARGS]
       hpccont instance run [options] IMAGE NAME [RUNSCRIPT ARGS]
       hpccont instance list [-j|--json] [-l|--logs] [-u|--user USER] [NAME-PATTERN]
       hpccont instance stats [-j|--json] [--no-stream] [-u|--user USER] NAME
       hpccont instance stop [-a|--all] [-s|--signal SIG] [-t|--timeout S] [-F|--force]
                             [-u|--user USER] [NAME...]
start and run take exec's options (hpccont exec --help) and --pid-file FILE.
"""
START_TIMEOUT_S = 30
INFO = "INFO:    "          # Apptainer's message prefixes (sylog)


def main(name: str, argv: list) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        raise UsageError(f"unknown instance command {cmd!r} ({', '.join(COMMANDS)})")
    return COMMANDS[cmd](cmd, rest, config.load())


def _info(text: str) -> None:
    from .main import MESSAGE_LEVEL
    if MESSAGE_LEVEL[0] >= 1:
        sys.stderr.write(f"{INFO}{text}\n")


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line) instead of printing usage and exiting."""

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


# -- start, run ---------------------------------------------------------------------------

def _split_start_args(action: str, argv: list) -> tuple:
    """Options as for exec (and --pid-file), then IMAGE NAME, then the script's arguments:
    (launch argv: options, IMAGE, arguments; NAME; pid file or None)."""
    pid_file = None
    opts = []
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        opt, eq, inline = argv[i].partition("=")
        if opt == "--pid-file":
            if not eq and i + 1 >= len(argv):
                raise UsageError("option --pid-file needs a value")
            pid_file = inline if eq else argv[i + 1]
            i += 1 if eq else 2
            continue
        takes_value = OPTIONS.get(opt, ("", "flag"))[1] != "flag" and not eq
        opts += argv[i:i + (2 if takes_value else 1)]
        i += 2 if takes_value else 1
    if i < len(argv) and argv[i] == "--":
        i += 1
    if len(argv) < i + 2:
        raise UsageError(f"usage: hpccont instance {action} [options] IMAGE NAME [ARGS]")
    return opts + [argv[i]] + argv[i + 2:], instances.check_name(argv[i + 1]), pid_file


def start(action: str, argv: list, cfg: dict) -> int:
    """``start`` runs the image's %startscript, ``run`` its runscript, as the instance's
    first process, with the arguments after NAME."""
    from ..runtime.plan import make_plan
    launch_argv, name, pid_file = _split_start_args(action, argv)
    existing = instances.read(cfg, name)
    if existing and instances.alive(existing):
        raise LaunchError(f"instance {name!r} is already running (image {existing['image']})")
    req = build_request("start", launch_argv)
    req.join = instances.join_key(name)
    req.env.update(instances.instance_env(name))
    plan = make_plan(req, cfg, os.environ, current_dir())
    if action == "run":
        _as_run(plan)
    logs = instances.log_paths(name, os.path.expanduser("~"), _user_name())
    os.makedirs(os.path.dirname(logs["out"]), mode=0o700, exist_ok=True)
    job, step_daemon = instances.job_daemon(os.environ)
    child = os.fork()
    if child == 0:
        _run_first_process(plan, cfg, logs, step_daemon)
    entry = _wait_started(cfg, plan, name, child, logs, job)
    if pid_file:
        _write_pid_file(pid_file, entry["keeper"])
    _info("instance started successfully")
    return 0


def _as_run(plan) -> None:
    """``instance run``: planned as ``start`` (the namespaces an instance is created with,
    start's options), then the runscript in place of the startscript, with run's fallbacks
    (no runscript: /apptainer, else /bin/sh)."""
    from ..runtime.plan import RUNSCRIPT
    plan.argv = [RUNSCRIPT] + plan.argv[1:]
    plan.action = "run"
    for prefix in ("APPTAINER", "SINGULARITY"):
        if f"{prefix}_COMMAND" in plan.env:
            plan.env[f"{prefix}_COMMAND"] = "run"


def _user_name() -> str:
    import pwd
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _run_first_process(plan, cfg, logs, step_daemon: int) -> None:
    """Child: detach from the terminal, log to files (appended to, as Apptainer does),
    become the instance's first process.  ``step_daemon``: the slurmstepd whose end ends the
    instance."""
    from ..runtime.join import apply_joined
    code = 255
    try:
        os.setsid()
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
        fds = (os.open("/dev/null", os.O_RDONLY), os.open(logs["out"], flags, 0o600),
               os.open(logs["err"], flags, 0o600))
        for src, dst in zip(fds, (0, 1, 2)):
            os.dup2(src, dst)
        apply_joined(plan, cfg, persistent=True, watch_pid=step_daemon)
    except BaseException as e:  # reported through the error log
        os.write(2, f"hpccont instance: {e}\n".encode())
    os._exit(code)


def _wait_started(cfg, plan, name, child, logs, job) -> dict:
    from ..runtime.join import keeper_pid
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        pid = keeper_pid(plan, cfg)
        if pid is not None:
            return instances.record(cfg, name, plan.image.path, pid, logs, job, plan.fakeroot)
        done, _ = os.waitpid(child, os.WNOHANG)
        if done:
            try:
                with open(logs["err"]) as f:
                    last = f.read().strip().splitlines()[-1]
            except (OSError, IndexError):
                last = "its first process exited"
            raise LaunchError(f"instance {name} failed to start: {last}")
        time.sleep(0.02)
    raise LaunchError(f"instance {name} did not start within {START_TIMEOUT_S} s")


def _write_pid_file(path: str, pid: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(f"{pid}\n")
    except OSError as e:
        sys.stderr.write(f"WARNING: Failed to write pid file: {path}: {e.strerror}\n")


# -- list, stats --------------------------------------------------------------------------

def _owner(user: str | None) -> tuple:
    """(uid, home) of --user (root only, as in Apptainer), or (None, None) for oneself."""
    if not user:
        return None, None
    import pwd
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise UsageError(f"--user {user!r}: no such user") from None
    if pw.pw_uid == os.geteuid():
        return None, None
    if os.geteuid() != 0:
        raise UsageError("only root can look at another user's instances (--user)")
    return pw.pw_uid, pw.pw_dir


def tabulate(lines: list) -> str:
    """Go's tabwriter as Apptainer sets it up (padding 4, spaces): every cell but a line's
    last is padded to its column's widest cell plus four."""
    widths: list = []
    for cells in lines:
        for i, cell in enumerate(cells[:-1]):
            if i == len(widths):
                widths.append(0)
            widths[i] = max(widths[i], len(cell))
    return "".join("".join(c.ljust(widths[i] + 4) for i, c in enumerate(cells[:-1]))
                   + cells[-1] + "\n" for cells in lines)


def list_(cmd: str, argv: list, cfg: dict) -> int:
    p = _Parser(prog="hpccont instance list")
    p.add_argument("-j", "--json", action="store_true", help="Apptainer's JSON")
    p.add_argument("-l", "--logs", action="store_true", help="the stdout and stderr log files")
    p.add_argument("-u", "--user", help="another user's instances (root only)")
    p.add_argument("pattern", nargs="?", default="*", help="instance names (a glob)")
    args = p.parse_args(argv)
    if args.json and args.logs:
        raise UsageError("--json and --logs cannot be used together")
    uid, home = _owner(args.user)
    rows = instances.entries(cfg, args.pattern, uid, home)
    if args.json:
        import json
        shown = [{"instance": e["name"], "pid": e["keeper"], "img": e["image"],
                  "ip": e.get("ip", ""), "logErrPath": e["logs"]["err"],
                  "logOutPath": e["logs"]["out"]} for e in rows]
        sys.stdout.write(json.dumps({"instances": shown}, indent="\t") + "\n")
    elif args.logs:
        lines = [["INSTANCE NAME", "PID", "LOGS"]]
        for e in rows:
            lines += [[e["name"], str(e["keeper"]), e["logs"]["err"]], ["", "", e["logs"]["out"]]]
        sys.stdout.write(tabulate(lines))
    else:
        lines = [["INSTANCE NAME", "PID", "IP", "IMAGE"]]
        lines += [[e["name"], str(e["keeper"]), e.get("ip", ""), e["image"]] for e in rows]
        sys.stdout.write(tabulate(lines))
    return 0


def stats(cmd: str, argv: list, cfg: dict) -> int:
    """Apptainer's table every second until interrupted (--no-stream: once), or one JSON
    reading; each after one second, the interval the CPU percentage is measured over."""
    import json
    import signal
    from ..runtime import instance_stats
    p = _Parser(prog="hpccont instance stats")
    p.add_argument("-j", "--json", action="store_true", help="one reading, Apptainer's JSON")
    p.add_argument("--no-stream", action="store_true", help="one reading, then exit")
    p.add_argument("-u", "--user", help="another user's instance (root only)")
    p.add_argument("name")
    args = p.parse_args(argv)
    uid, home = _owner(args.user)
    found = instances.find(cfg, args.name, uid, home)
    if len(found) != 1:
        raise UsageError(f"query returned more than one instance ({len(found)})")
    entry = found[0]
    if not args.json:
        _info(f"Stats for {entry['name']} instance of {entry['image']} (PID={entry['keeper']})")
    clear = sys.stdout.isatty() and not (args.no_stream or args.json)
    # Ctrl-C ends a stream with status 0, as in Apptainer: a handler that only notes it (a
    # second SIGINT while a KeyboardInterrupt unwinds would kill us with status 130)
    interrupted: list = []
    signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    before = instance_stats.sample(entry)
    while True:
        deadline = time.monotonic() + 1.0
        while not interrupted and time.monotonic() < deadline:
            time.sleep(0.05)
        if interrupted:
            return 0
        if not instances.alive(entry):
            raise LaunchError(f"instance {entry['name']} is gone")
        after = instance_stats.sample(entry)
        if args.json:
            after.pop("_time")
            sys.stdout.write(json.dumps(after, indent="\t") + "\n")
            return 0
        text = tabulate([instance_stats.HEADER, instance_stats.row(entry["name"], before, after)])
        sys.stdout.write(("\033[2J\033[1;1H" if clear else "") + text)
        sys.stdout.flush()
        if args.no_stream:
            return 0
        before = after


# -- stop ---------------------------------------------------------------------------------

def stop(cmd: str, argv: list, cfg: dict) -> int:
    p = _Parser(prog="hpccont instance stop")
    p.add_argument("names", nargs="*", help="instance names (globs)")
    p.add_argument("-a", "--all", action="store_true", help="every instance of the user")
    p.add_argument("-F", "--force", action="store_true", help="SIGKILL at once")
    p.add_argument("-s", "--signal", default=instances.STOP_SIGNAL,
                   help="signal sent to the instance: a name or number (default SIGINT)")
    p.add_argument("-t", "--timeout", type=float, default=instances.STOP_TIMEOUT_S,
                   help="SIGKILL what is left after this many seconds (default 10)")
    p.add_argument("-u", "--user", help="another user's instances (root only)")
    args = p.parse_args(argv)
    if not args.names and not args.all:
        raise UsageError("name an instance to stop, or --all")
    if args.timeout < 0:
        raise UsageError("--timeout must be 0 or more seconds")
    import signal
    sig = signal.SIGKILL if args.force else instances.parse_signal(args.signal)
    uid, home = _owner(args.user)
    found = {}
    for pattern in ["*"] if args.all else args.names:
        for e in instances.find(cfg, pattern, uid, home):
            found.setdefault(e["name"], e)
    for e in found.values():
        instances.stop(cfg, e, sig, args.timeout, say=_info)
    return 0


COMMANDS = {"start": start, "run": start, "list": list_, "stats": stats, "stop": stop}
