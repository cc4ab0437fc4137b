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
    "--mount": ("mounts", "list"),
    "--env": ("env", "list"),
    "--env-file": ("env_files", "list"),
    "-e": ("cleanenv", "flag"), "--cleanenv": ("cleanenv", "flag"),
    "-c": ("contain", "flag"), "--contain": ("contain", "flag"),
    "-C": ("containall", "flag"), "--containall": ("containall", "flag"),
    "--no-home": ("no_home", "flag"),
    "-H": ("home", "value"), "--home": ("home", "value"),
    "--pwd": ("pwd", "value"), "--cwd": ("pwd", "value"),
    "--writable-tmpfs": ("writable_tmpfs", "flag"),
    "-o": ("overlays", "list"), "--overlay": ("overlays", "list"),
    "-w": ("writable", "flag"), "--writable": ("writable", "flag"),
    "-f": ("fakeroot", "flag"), "--fakeroot": ("fakeroot", "flag"),
    "--nv": ("nv", "flag"),
    "--nv-strict": ("nv_strict", "flag"),
    "--rocm": ("rocm", "flag"),
    "--mpi": ("mpi", "value"),
    "--app": ("app", "value"),
    "--join": ("join", "value"),
    "--share": ("share", "flag"), "--no-share": ("no_share", "flag"),
    "--dry-run": ("dry_run", "flag"),
    "-d": ("debug", "flag"), "--debug": ("debug", "flag"),
    "-p": ("pid", "flag"), "--pid": ("pid", "flag"), "--no-pid": ("no_pid", "flag"),
    "--no-init": ("no_init", "flag"),
    "-i": ("ipc", "flag"), "--ipc": ("ipc", "flag"),
    "--uts": ("uts", "flag"), "--hostname": ("hostname", "value"),
    "-n": ("net", "flag"), "--net": ("net", "flag"), "--network": ("network", "value"),
    "-u": ("userns", "flag"), "--userns": ("userns", "flag"),
    "--no-eval": ("no_eval", "flag"), "--no-umask": ("no_umask", "flag"),
    "--no-mount": ("no_mount", "list"),
    "-S": ("scratch", "list"), "--scratch": ("scratch", "list"),
    "-W": ("workdir", "value"), "--workdir": ("workdir", "value"),
    "--cpus": ("cpus", "value"), "--memory": ("memory", "value"),
    "-s": ("shell", "value"), "--shell": ("shell", "value"),
}
# Options only some actions take (Apptainer registers --pid and --cwd for the actions but not
# for instance start, --shell for shell only).
ONLY_FOR = {"shell": ("shell",), "pid": ("exec", "run", "shell", "test"),
            "no_pid": ("exec", "run", "shell", "test", "start")}

# Apptainer's environment keys of each option (APPTAINER_<KEY>, else SINGULARITY_<KEY>), as its
# action_flags.go binds them; "append" options add to the command line's values (-B), the
# others apply only when the option is not on the command line.
ENV_KEYS: dict[str, tuple[tuple[str, ...], str]] = {
    "app": (("APP", "APPNAME"), "set"), "binds": (("BIND", "BINDPATH"), "append"),
    "mounts": (("MOUNT",), "append"), "home": (("HOME",), "set"),
    "scratch": (("SCRATCH", "SCRATCHDIR"), "set"), "workdir": (("WORKDIR",), "set"),
    "shell": (("SHELL",), "set"), "pwd": (("CWD", "TARGET_CWD", "PWD", "TARGET_PWD"), "set"),
    "hostname": (("HOSTNAME",), "set"), "network": (("NETWORK",), "set"),
    "cleanenv": (("CLEANENV",), "set"), "contain": (("CONTAIN",), "set"),
    "containall": (("CONTAINALL",), "set"), "nv": (("NV",), "set"), "rocm": (("ROCM",), "set"),
    "writable_tmpfs": (("WRITABLE_TMPFS",), "set"),
    "overlays": (("OVERLAY", "OVERLAYIMAGE"), "set"), "writable": (("WRITABLE",), "set"),
    "fakeroot": (("FAKEROOT",), "set"), "no_home": (("NO_HOME",), "set"),
    "no_mount": (("NO_MOUNT",), "set"), "no_init": (("NOSHIMINIT",), "set"),
    "pid": (("PID", "UNSHARE_PID"), "set"), "no_pid": (("NO_PID",), "set"),
    "ipc": (("IPC", "UNSHARE_IPC"), "set"), "net": (("NET", "UNSHARE_NET"), "set"),
    "uts": (("UTS", "UNSHARE_UTS"), "set"), "userns": (("USERNS", "UNSHARE_USERNS"), "set"),
    "env_files": (("ENV_FILE",), "set"), "no_umask": (("NO_UMASK",), "set"),
    "no_eval": (("NO_EVAL",), "set"),
    # sic: Apptainer 1.3 binds --cpus to CPU_SHARES
    "cpus": (("CPU_SHARES",), "set"), "memory": (("MEMORY",), "set"),
}
TRUE_WORDS = ("1", "t", "T", "TRUE", "true", "True")
FALSE_WORDS = ("0", "f", "F", "FALSE", "false", "False")

USAGE = {
    "exec": "hpccont exec [options] IMAGE COMMAND [ARGS...]",
    "run": "hpccont run [options] IMAGE [ARGS...]",
    "shell": "hpccont shell [options] IMAGE",
    "test": "hpccont test [options] IMAGE",
    "start": "hpccont instance start [options] IMAGE NAME [ARGS...]",
}

HELP = """
Options:
  -B, --bind SRC[:DST[:ro|rw]]  bind a host path (comma lists; also $APPTAINER_BIND, $HPCCONT_BIND)
  --mount type=bind,src=S,dst=D[,ro]  a bind in Docker's --mount syntax
  --env NAME=VALUE              set a variable inside (also $HPCCONT_ENV_NAME, $APPTAINERENV_NAME)
  --env-file FILE               a file of NAME=VALUE shell assignments to set inside
  -e, --cleanenv                do not pass the host environment
  -c, --contain                 private /tmp, /var/tmp and $HOME; no working directory bind
  -C, --containall              --contain plus --pid, --ipc and --cleanenv
  --no-home                     do not mount the home directory
  -H, --home SRC[:DST]          use SRC as home directory (at DST inside)
  --pwd DIR, --cwd DIR          working directory inside the container
  --writable-tmpfs              writable root, changes kept in memory and dropped at exit
  -o, --overlay PATH[:ro]       a persistent overlay: directory, ext3 image or SIF overlay partition
  -w, --writable                write to the image (a sandbox of yours, a SIF's overlay partition)
  -f, --fakeroot                run as root inside (user namespace; subuid ranges when you have them)
  --nv, --nv-strict             NVIDIA GPU support (strict: fail without a driver)
  --rocm                        AMD GPU support (ROCm libraries, /dev/kfd, /dev/dri)
  --mpi hybrid|bind             MPI mode (bind: host MPI libraries replace the image's)
  --app NAME                    SCIF app of the image
  --join KEY                    tasks with the same KEY share one container on this node
  --share, --no-share           join (or leave) a container mounted for the same plan in this
                                job or session (site: runtime.share; also $HPCCONT_SHARE=1|0)
  -p, --pid                     a new PID namespace (the command under a small init; --no-init: as PID 1)
  -i, --ipc                     a new IPC namespace
  --uts, --hostname NAME        a new UTS namespace (with that host name)
  -n, --net [--network none]    a new network namespace with loopback only
  -u, --userns                  accepted: containers always run in a user namespace without root
  --no-eval, --no-umask         values set as given; umask 0022 instead of yours
  --no-mount LIST               leave out default mounts: proc,sys,dev,home,tmp,cwd,bind-paths,/PATH
  -S, --scratch DIR             an empty writable directory DIR (under --workdir when given)
  -W, --workdir DIR             with --contain: /tmp and /var/tmp from DIR/tmp and DIR/var_tmp
  --cpus N, --memory BYTES      limits through your delegated cgroup (else a warning)
  -s, --shell PROGRAM           the shell of 'shell'
  --dry-run                     print the launch plan as JSON and exit
  -d, --debug                   print the launch plan on stderr, and tracebacks
"""


def parse(action: str, argv: list[str], environ=None) -> tuple[ContainerRequest, dict[str, object]]:
    """Returns the request and the raw option values; build_request turns the list options
    (binds, --env, --env-file) into their final form.  ``environ`` (when given) supplies the
    APPTAINER_<KEY> / SINGULARITY_<KEY> values of options not on the command line."""
    values: dict[str, object] = {"binds": [], "mounts": [], "env": [], "env_files": [],
                                 "no_mount": [], "scratch": [], "overlays": []}
    given: set[str] = set()
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
        if name not in OPTIONS or action not in ONLY_FOR.get(OPTIONS[name][0], (action,)):
            raise UsageError(f"unknown option {name} (see 'hpccont {action} --help')")
        attr, kind = OPTIONS[name]
        given.add(attr)
        if kind == "flag":
            if eq:
                if inline not in TRUE_WORDS + FALSE_WORDS:
                    raise UsageError(f"option {name} takes no value")
                values[attr] = inline in TRUE_WORDS
            else:
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
    if environ is not None:
        _options_from_environment(values, given, environ, action)
    if i >= len(argv):
        raise UsageError(f"missing image (usage: {USAGE[action]})")
    image, command = argv[i], argv[i + 1:]
    if values.get("mpi") not in (None, "hybrid", "bind"):
        raise UsageError(f"--mpi must be hybrid or bind, not {values['mpi']!r}")
    containall = bool(values.get("containall"))
    pid = (bool(values.get("pid")) or containall) and not values.get("no_pid")
    network = values.get("network")
    req = ContainerRequest(
        image=image, action=action, argv=command,
        cleanenv=bool(values.get("cleanenv")) or containall, contain=bool(values.get("contain")),
        containall=containall, mount_home=not values.get("no_home"),
        home=values.get("home"), pwd=values.get("pwd"),
        writable_tmpfs=bool(values.get("writable_tmpfs")), nv=bool(values.get("nv")) or bool(
            values.get("nv_strict")), nv_strict=bool(values.get("nv_strict")),
        mpi=values.get("mpi"), app=values.get("app"), join=values.get("join"),
        dry_run=bool(values.get("dry_run")), debug=bool(values.get("debug")),
        pid=pid, no_init=bool(values.get("no_init")),
        ipc=bool(values.get("ipc")) or containall,
        uts=bool(values.get("uts")) or bool(values.get("hostname")),
        hostname=values.get("hostname") or None,
        net=bool(values.get("net")) or bool(network), network=network,
        no_umask=bool(values.get("no_umask")), no_eval=bool(values.get("no_eval")),
        no_mount=[m.strip() for v in values["no_mount"] for m in v.split(",") if m.strip()],
        scratch=[d.strip() for v in values["scratch"] for d in v.split(",") if d.strip()],
        workdir=values.get("workdir"), rocm=bool(values.get("rocm")),
        cpus=values.get("cpus"), memory=values.get("memory"), shell=values.get("shell"))
    return req, values  # type: ignore[return-value]


def _options_from_environment(values: dict, given: set, environ, action: str) -> None:
    """APPTAINER_<KEY> (else SINGULARITY_<KEY>) for each option, as Apptainer's command line
    reads them: blank values are ignored, booleans parse as Go's strconv.ParseBool."""
    # One pass over the environment (usually none of these is set) instead of two lookups per
    # option key: os.environ encodes every key it is asked for.
    present = {k: v for k, v in environ.items() if k.startswith(("APPTAINER_", "SINGULARITY_"))}
    if not present:
        return
    for attr, (keys, how) in ENV_KEYS.items():
        if action not in ONLY_FOR.get(attr, (action,)):
            continue
        for key in keys:
            raw = present.get(f"APPTAINER_{key}")
            if raw is None:
                raw = present.get(f"SINGULARITY_{key}")
            if raw is None or not raw.strip():
                continue
            if how == "set" and attr in given:
                continue
            kind = next(k for a, k in OPTIONS.values() if a == attr)
            if kind == "flag":
                value = raw.strip()
                if value not in TRUE_WORDS + FALSE_WORDS:
                    raise UsageError(f"APPTAINER_{key}={raw!r}: expected true or false")
                values[attr] = value in TRUE_WORDS
            elif kind == "list":
                values[attr].append(",".join(p.strip() for p in raw.split(","))
                                    if how == "set" else raw)
            else:
                values[attr] = raw.strip()
            given.add(attr)


def build_request(action: str, argv: list[str], environ=os.environ) -> ContainerRequest:
    return request_and_share(action, argv, environ)[0]


def request_and_share(action: str, argv: list[str], environ=os.environ):
    """The request, and the launch's --share (True) / --no-share (False, it wins) / neither
    (None) choice, from one pass over the command line."""
    from ..runtime.environment import parse_env_assignment, read_env_file
    from ..runtime.mounts import parse_binds
    req, values = parse(action, argv, environ)
    specs = list(values["binds"])
    if environ.get("HPCCONT_BIND"):
        specs.insert(0, environ["HPCCONT_BIND"])
    req.binds = parse_binds(specs) + [b for m in values["mounts"] for b in parse_mount(m)]
    env: dict[str, str] = {}
    for path in values["env_files"]:
        env.update(read_env_file(path, environ, image=req.image))
    user: dict[str, str] = {}
    for item in values["env"]:
        for part in [item] if "," not in item else _split_env_list(item):
            k, v = parse_env_assignment(part)
            user[k] = v
    env.update(user)   # --env wins over --env-file
    req.env = env
    req.overlays = [p for v in values["overlays"] for p in v.split(",") if p]
    req.writable = bool(values.get("writable"))
    req.fakeroot = bool(values.get("fakeroot"))
    from .main import MESSAGE_LEVEL
    req.message_level = MESSAGE_LEVEL[0]
    return req, False if values.get("no_share") else True if values.get("share") else None


def parse_mount(spec: str) -> list:
    """``--mount type=bind,src=S,dst=D[,ro]`` as Apptainer parses it (CSV records, one bind
    each; keys type, source/src, destination/dst/target, ro/readonly; image-src and id, which
    mount from inside an image file, and bind-propagation are refused here)."""
    import csv
    from ..errors import BindError
    from ..runtime.mounts import refuse_climbing
    from ..runtime.request import Bind
    out = []
    try:
        records = list(csv.reader(spec.splitlines()))
    except csv.Error as e:
        raise BindError(f"--mount {spec!r}: {e}") from None
    for record in records:
        src = dst = ""
        readonly = False
        for field in record:
            key, _, value = field.partition("=")
            if key == "type":
                if value != "bind":
                    raise BindError(f"--mount {spec!r}: unsupported mount type {value!r}, only "
                                    "'bind' is supported")
            elif key in ("source", "src"):
                src = value
            elif key in ("destination", "dst", "target"):
                dst = value
            elif key in ("ro", "readonly"):
                readonly = True
            elif key in ("image-src", "id", "bind-propagation"):
                raise BindError(f"--mount {spec!r}: {key} is not supported")
            else:
                raise BindError(f"--mount {spec!r}: invalid key {key!r} in mount specification")
        if not src or not dst:
            raise BindError(f"--mount {spec!r}: mounts must specify a source and a destination")
        if not dst.startswith("/"):
            raise BindError(f"--mount {spec!r}: destination must be an absolute path")
        refuse_climbing(dst)
        out.append(Bind(src=os.path.abspath(src), dst=os.path.normpath(dst), readonly=readonly))
    return out


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
    req, share = request_and_share(action, argv)
    if "SLURM_STEP_ID" in os.environ:
        # Run as a task of a Slurm step (``srun container-exec ...``, ``srun hpccont exec``):
        # the step's PMIx directories are bound as for the plugin's own tasks.
        from ..schedulers.slurm.task import step_binds_of_environment
        req.scheduler_binds += step_binds_of_environment(os.environ)
    return launch(req, share=share)
