"""``hpccont exec|run|shell|test``: the hot path.

A small table-driven parser instead of argparse: this module runs once per task of every job,
and argparse plus its imports cost more than the rest of the launch.  Parsing stops at the
first positional argument (the image); everything after it belongs to the command untouched.
"""
from __future__ import annotations

import os
import sys

from ..errors import UsageError
from ..runtime.request import ContainerRequest

# option -> (ContainerRequest attribute or pseudo-attribute, kind); kind: flag | value | list
OPTIONS: dict[str, tuple[str, str]] = {
    "-B": ("binds", "list"), "--bind": ("binds", "list"),
    "--env": ("env", "list"),
    "--env-file": ("env_files", "list"),
    "-e": ("cleanenv", "flag"), "--cleanenv": ("cleanenv", "flag"),
    "-c": ("contain", "flag"), "--contain": ("contain", "flag"),
    "-C": ("containall", "flag"), "--containall": ("containall", "flag"),
    "--no-home": ("no_home", "flag"),
    "-H": ("home", "value"), "--home": ("home", "value"),
    "--pwd": ("pwd", "value"),
    "--writable-tmpfs": ("writable_tmpfs", "flag"),
    "--nv": ("nv", "flag"),
    "--nv-strict": ("nv_strict", "flag"),
    "--mpi": ("mpi", "value"),
    "--app": ("app", "value"),
    "--join": ("join", "value"),
    "--dry-run": ("dry_run", "flag"),
    "-d": ("debug", "flag"), "--debug": ("debug", "flag"),
}

USAGE = {
    "exec": "hpccont exec [options] IMAGE COMMAND [ARGS...]",
    "run": "hpccont run [options] IMAGE [ARGS...]",
    "shell": "hpccont shell [options] IMAGE",
    "test": "hpccont test [options] IMAGE",
    "start": "hpccont instance start [options] IMAGE NAME [ARGS...]",
}

HELP = """
Options:
  -B, --bind SRC[:DST[:ro|rw]]  bind a host path (comma lists; also $HPCCONT_BIND)
  --env NAME=VALUE              set a variable inside (also $HPCCONT_ENV_NAME)
  --env-file FILE               NAME=VALUE lines to set inside
  -e, --cleanenv                do not pass the host environment
  -c, --contain                 private /tmp and /var/tmp, no working directory bind
  -C, --containall              --contain plus a private $HOME
  --no-home                     do not mount the home directory
  -H, --home SRC[:DST]          use SRC as home directory (at DST inside)
  --pwd DIR                     working directory inside the container
  --writable-tmpfs              writable root, changes kept in memory and dropped at exit
  --nv, --nv-strict             NVIDIA GPU support (strict: fail without a driver)
  --mpi hybrid|bind             MPI mode (bind: host MPI libraries replace the image's)
  --app NAME                    SCIF app of the image
  --join KEY                    tasks with the same KEY share one container on this node
  --dry-run                     print the launch plan as JSON and exit
  -d, --debug                   print the launch plan on stderr, and tracebacks
"""


def parse(action: str, argv: list[str]) -> tuple[ContainerRequest, dict[str, object]]:
    """Returns the request and the raw option values; build_request turns the list options
    (binds, --env, --env-file) into their final form."""
    values: dict[str, object] = {"binds": [], "env": [], "env_files": []}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        if arg in ("-h", "--help"):
            sys.stdout.write(f"usage: {USAGE[action]}\n{HELP}")
            raise SystemExit(0)
        name, eq, inline = arg.partition("=")
        if name not in OPTIONS:
            raise UsageError(f"unknown option {name} (see 'hpccont {action} --help')")
        attr, kind = OPTIONS[name]
        if kind == "flag":
            if eq:
                raise UsageError(f"option {name} takes no value")
            values[attr] = True
        else:
            if eq:
                value = inline
            else:
                i += 1
                if i >= len(argv):
                    raise UsageError(f"option {name} needs a value")
                value = argv[i]
            if kind == "list":
                values[attr].append(value)
            else:
                values[attr] = value
        i += 1
    if i >= len(argv):
        raise UsageError(f"missing image (usage: {USAGE[action]})")
    image, command = argv[i], argv[i + 1:]
    if values.get("mpi") not in (None, "hybrid", "bind"):
        raise UsageError(f"--mpi must be hybrid or bind, not {values['mpi']!r}")
    req = ContainerRequest(
        image=image, action=action, argv=command,
        cleanenv=bool(values.get("cleanenv")), contain=bool(values.get("contain")),
        containall=bool(values.get("containall")), mount_home=not values.get("no_home"),
        home=values.get("home"), pwd=values.get("pwd"),
        writable_tmpfs=bool(values.get("writable_tmpfs")), nv=bool(values.get("nv")) or bool(
            values.get("nv_strict")), nv_strict=bool(values.get("nv_strict")),
        mpi=values.get("mpi"), app=values.get("app"), join=values.get("join"),
        dry_run=bool(values.get("dry_run")), debug=bool(values.get("debug")))
    return req, values  # type: ignore[return-value]


def build_request(action: str, argv: list[str], environ=os.environ) -> ContainerRequest:
    from ..runtime.environment import parse_env_assignment, read_env_file
    from ..runtime.mounts import parse_binds
    req, values = parse(action, argv)
    specs = list(values["binds"])
    if environ.get("HPCCONT_BIND"):
        specs.insert(0, environ["HPCCONT_BIND"])
    req.binds = parse_binds(specs)
    env: dict[str, str] = {}
    for path in values["env_files"]:
        env.update(read_env_file(path))
    for item in values["env"]:
        for part in [item] if "," not in item else _split_env_list(item):
            k, v = parse_env_assignment(part)
            env[k] = v
    req.env = env
    return req


def _split_env_list(item: str) -> list[str]:
    """``--env A=1,B=2`` (Apptainer allows comma lists); a comma inside a value stays if the
    next piece is not NAME=..."""
    out: list[str] = []
    for piece in item.split(","):
        head = piece.split("=", 1)[0]
        if out and ("=" not in piece or not head.replace("_", "a").isalnum()):
            out[-1] += "," + piece
        else:
            out.append(piece)
    return out


def main(action: str, argv: list[str]) -> int:
    from ..runtime.launch import launch
    return launch(build_request(action, argv))
