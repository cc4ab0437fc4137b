"""``hpccont pbs``: PBS hook support for administrators.

  install-commands   print the qmgr commands that create the resources and install the hook
  check-hook         validate a hook config (JSON) and the site config it names
  launch-command     show what the execjob_launch hook would run for a job request
"""
import argparse
import json
import os
import shlex
import sys
from typing import List

from ..errors import UsageError

HOOK_NAME = "hpccont_launch"
HOOK_EVENTS = ("execjob_begin", "execjob_launch", "execjob_end")
# After the bundled cgroups hook (order 100), so the task it launches is already in its cgroup
# and has its device environment when this hook wraps it.
DEFAULT_ORDER = 200
# execjob_end may wait cleanup_grace seconds per signal round; begin may verify a signature.
DEFAULT_ALARM = 60
# Known errors reject the one job; offline_vnodes is for real breakage (alarm, crash), so that
# a node with a broken installation is taken out instead of failing every job sent to it.
DEFAULT_FAIL_ACTION = "offline_vnodes"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _share_dir() -> str:
    # the repository / installed tree: hpccont/cli/ -> ../../pbs_hooks
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "pbs_hooks")


def install_commands(hook_file: str, config_file: str, *, name: str = HOOK_NAME,
                     order: int = DEFAULT_ORDER, alarm: int = DEFAULT_ALARM,
                     fail_action: str = DEFAULT_FAIL_ACTION, resources: bool = True) -> List[str]:
    from ..schedulers.pbs import RESOURCE_TYPES
    lines = []
    if resources:
        lines += [f'qmgr -c "create resource {res} type={typ}"' for res, typ in RESOURCE_TYPES.items()]
    q = f"qmgr -c \"{{}}\""
    lines += [
        q.format(f"create hook {name}"),
        q.format(f"set hook {name} type = site"),
        q.format(f"set hook {name} user = pbsadmin"),
        q.format(f"set hook {name} event = '{','.join(HOOK_EVENTS)}'"),
        q.format(f"set hook {name} order = {order}"),
        q.format(f"set hook {name} alarm = {alarm}"),
        q.format(f"set hook {name} fail_action = {fail_action}"),
        q.format(f"import hook {name} application/x-python default {hook_file}"),
        q.format(f"import hook {name} application/x-config default {config_file}"),
        q.format(f"set hook {name} enabled = true"),
    ]
    return lines


def _install(argv: List[str]) -> int:
    p = _Parser(prog="hpccont pbs install-commands",
                description="Print the qmgr commands that install the hpccont PBS hook.")
    share = _share_dir()
    p.add_argument("--hook-file", default=os.path.join(share, "hpccont_launch.py"))
    p.add_argument("--config", default=os.path.join(share, "hpccont.json"),
                   help="hook config JSON to import")
    p.add_argument("--name", default=HOOK_NAME)
    p.add_argument("--order", type=int, default=DEFAULT_ORDER)
    p.add_argument("--alarm", type=int, default=DEFAULT_ALARM)
    p.add_argument("--fail-action", default=DEFAULT_FAIL_ACTION)
    p.add_argument("--no-resources", action="store_true", help="resources already exist")
    a = p.parse_args(argv)
    if not 1 <= a.order <= 1000:
        raise UsageError("--order must be between 1 and 1000 for a site hook")
    if a.alarm <= 0:
        raise UsageError("--alarm must be a positive number of seconds")
    lines = install_commands(os.path.abspath(a.hook_file), os.path.abspath(a.config), name=a.name,
                             order=a.order, alarm=a.alarm, fail_action=a.fail_action,
                             resources=not a.no_resources)
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _check(argv: List[str]) -> int:
    p = _Parser(prog="hpccont pbs check-hook", description="Validate a PBS hook config.")
    p.add_argument("config", nargs="?", default=os.path.join(_share_dir(), "hpccont.json"))
    a = p.parse_args(argv)
    from ..schedulers import pbs as hp
    cfg = hp.load_hook_config(a.config)
    hp.load_site_config(cfg)
    problems = []
    if not os.access(cfg.hpccont, os.X_OK):
        problems.append(f"hpccont {cfg.hpccont} is not an executable file on this host")
    # the hook runs these as root: nobody but root may be able to change them
    for what, program in (("hpccont", cfg.hpccont),
                          ("verify_command", (cfg.verify_command or [""])[0])):
        for path in filter(None, (program, os.path.dirname(program))):
            try:
                st = os.stat(path)
            except OSError:
                continue
            if st.st_uid != 0 or st.st_mode & 0o022:
                problems.append(f"{what}: {path} is run by the hook as root, but is not owned "
                                "by root and writable by root only")
    for entry in cfg.pythonpath:
        if not os.path.isdir(os.path.join(entry, "hpccont")):
            problems.append(f"pythonpath entry {entry} has no hpccont package")
    for line in problems:
        sys.stderr.write(f"hpccont pbs check-hook: {a.config}: {line}\n")
    if not problems:
        sys.stdout.write(f"{a.config}: ok (resources: {', '.join(cfg.resources)})\n")
    return 1 if problems else 0


def _split_assignments(values: List[str], what: str) -> dict:
    found = {}
    for v in values:
        if "=" not in v:
            raise UsageError(f"{what} needs NAME=VALUE, not {v!r}")
        k, val = v.split("=", 1)
        found[k] = val
    return found


def _launch(argv: List[str]) -> int:
    p = _Parser(prog="hpccont pbs launch-command",
                description="Show the command the execjob_launch hook makes of a task.")
    p.add_argument("--config", default=None, help="hook config JSON")
    p.add_argument("-l", dest="resources", action="append", default=[], metavar="RES=VALUE",
                   help="a job resource, as with qsub -l")
    p.add_argument("-v", dest="variables", action="append", default=[], metavar="VAR=VALUE",
                   help="a job variable, as with qsub -v")
    p.add_argument("--job-id", default="0.pbs")
    p.add_argument("--tm-task", action="store_true", help="a task spawned through TM")
    p.add_argument("--user", default=None, metavar="NAME",
                   help="the job's user: open its image with that user's rights, as the hook "
                        "does (default: your own)")
    p.add_argument("--json", action="store_true")
    p.add_argument("program", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    program = a.program[1:] if a.program[:1] == ["--"] else a.program
    if not program:
        raise UsageError("give the task's program (after --)")
    from ..schedulers import pbs as hp
    cfg = hp.load_hook_config(a.config)
    site = hp.load_site_config(cfg)
    variables = _split_assignments(a.variables, "-v")
    variables.setdefault("PBS_O_WORKDIR", os.getcwd())
    env = dict(os.environ, **variables, PBS_TASKNUM="2" if a.tm_task else "1")
    ctx = hp.JobContext(job_id=a.job_id, variables=variables, env=env,
                        resources=_split_assignments(a.resources, "-l"),
                        progname=program[0], argv=program, primary=not a.tm_task,
                        user=a.user)
    decision = hp.plan_launch(ctx, cfg, site)
    result = decision.argv if decision.wrap else program
    if a.json:
        sys.stdout.write(json.dumps({"wrap": decision.wrap, "reason": decision.reason,
                                     "progname": decision.progname or program[0],
                                     "argv": result, "env_set": decision.env_set}) + "\n")
    else:
        sys.stdout.write(" ".join(shlex.quote(x) for x in result) + "\n")
    return 0


SUBCOMMANDS = {"install-commands": _install, "check-hook": _check, "launch-command": _launch}


def main(name: str, argv: List[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(__doc__.split("\n", 1)[1].lstrip("\n"))
        sys.stdout.write("\nusage: hpccont pbs {" + ",".join(SUBCOMMANDS) + "} [options]\n")
        return 0 if argv else 2
    if argv[0] not in SUBCOMMANDS:
        raise UsageError(f"unknown pbs command {argv[0]!r} (known: {', '.join(SUBCOMMANDS)})")
    return SUBCOMMANDS[argv[0]](argv[1:])
