"""``hpccont slurm``: the SPANK plugin's entry points, its installer, and step accounting.

  hpccont slurm install-plugin [...]   build spank_plugin/ against the installed Slurm headers,
                                       install it, write the plugstack line and the cli_filter
  hpccont slurm jobs [--log F] [--json] image path + SIF digest of each step (admins)
  hpccont slurm task|prepare|account    what the plugin execs (not for users)

``task`` runs once per task of every containered job: its arguments are parsed by hand (argparse
costs more to import than the decision takes).
"""
from __future__ import annotations

import os
import sys
TYPE_CHECKING = False   # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Dict, List, Optional

from ..errors import SchedulerError, UsageError

USAGE = """usage: hpccont slurm install-plugin [--source DIR] [--prefix DIR] [--plugstack FILE]
                                    [--cli-filter FILE | --no-cli-filter] [--python PATH]
                                    [--image-dir DIR]... [--wrap-batch yes|no]
                                    [--accounting FILE]
       hpccont slurm jobs [--log FILE] [--json] [--all]
       hpccont slurm task|prepare|account --step J.S [--arg K=V]... [--opt NAME[=V]]... -- ARGV
"""


def main(name: str, argv: List[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    sub, rest = argv[0], argv[1:]
    if sub not in SUBCOMMANDS:
        raise UsageError(f"unknown 'hpccont slurm' command {sub!r} (see 'hpccont slurm --help')")
    return SUBCOMMANDS[sub](rest)


# -- plugin entry points -------------------------------------------------------------------------
def _plugin_argv(argv: List[str]):
    """--step J.S --arg K=V... --opt NAME[=V]... [--user U:G:GROUPS] [--node N] [--jobenv N=V]...
    -- PROGRAM...

    ``--user``, ``--node`` and ``--jobenv`` come only for ``account`` (root): the job's
    identity and this node's index in the step from Slurm, and the job's variables as plain
    values (its process environment is the plugin's own)."""
    from ..schedulers import slurm
    values: Dict[str, List[str]] = {"--step": [], "--arg": [], "--opt": [], "--user": [],
                                    "--node": [], "--jobenv": []}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            i += 1
            break
        if a in values and i + 1 < len(argv):
            values[a].append(argv[i + 1])
            i += 2
            continue
        raise UsageError(f"unexpected argument {a!r} (this command is run by the SPANK plugin)")
    if len(values["--step"]) != 1:
        raise UsageError("--step is required")
    jobenv = dict(v.split("=", 1) for v in values["--jobenv"] if "=" in v)
    node = values["--node"][-1] if values["--node"] else None
    if node is not None and not node.isdigit():
        raise UsageError(f"--node {node!r} is not a node index")
    return (slurm.parse_step(values["--step"][0]), slurm.parse_plugin_args(values["--arg"]),
            slurm.parse_spank_options(values["--opt"]), argv[i:],
            slurm.parse_identity(values["--user"][-1]) if values["--user"] else None, jobenv,
            int(node) if node is not None else None)


def cmd_task(argv: List[str]) -> int:
    from ..schedulers import slurm
    step, args, spank, program, _, _, _ = _plugin_argv(argv)
    return slurm.run_task(step, args, spank, program)


def cmd_prepare(argv: List[str]) -> int:
    from ..schedulers import slurm
    step, args, spank, program, _, _, _ = _plugin_argv(argv)
    _exit_at_once(slurm.run_prepare(step, args, spank, program))


def cmd_account(argv: List[str]) -> int:
    from ..schedulers import slurm
    step, args, spank, _, ident, jobenv, node = _plugin_argv(argv)
    _exit_at_once(slurm.run_account(step, args, spank, jobenv, ident, node, sys.argv))


def _exit_at_once(status: int) -> None:
    """prepare and account run once per step and node, and slurmstepd waits for both before
    the tasks start: their work done (output written with os.write, files closed), they skip
    the interpreter's teardown, ~3 ms of module finalization measured.  Errors still go
    through the CLI's one-line report."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


# -- jobs ----------------------------------------------------------------------------------------
COLUMNS = (("JOBID", "job"), ("STEP", "step"), ("USER", "user"), ("NODE", "node"),
           ("STATE", "state"), ("IMAGE", "image"), ("SHA256", "sha256"))


def cmd_jobs(argv: List[str]) -> int:
    import argparse
    import json
    from ..schedulers import slurm
    p = argparse.ArgumentParser(prog="hpccont slurm jobs",
                                description="image and digest of each containered step")
    p.add_argument("--log", action="append",
                   help="accounting log(s) (default: the plugstack 'accounting=' value)")
    p.add_argument("--plugstack", default=None, help="plugstack file to read 'accounting=' from")
    p.add_argument("--json", action="store_true", help="one JSON object per step")
    p.add_argument("--all", action="store_true", help="include jobs no longer in the queue")
    ns = _parse(p, argv)
    logs = ns.log or [_accounting_from_plugstack(ns.plugstack)]
    records: List[dict] = []
    for log in logs:
        records += slurm.read_entries(log)
    queue = slurm.queue_jobs()
    rows = []
    for r in records:
        job = queue.get(str(r.get("job")))
        if job is None and not ns.all:
            continue
        r = dict(r)
        r["state"] = _job_state(job) if job else "gone"
        rows.append(r)
    # Jobs whose AdminComment holds an image but whose node logs we cannot see.
    seen = {str(r.get("job")) for r in rows}
    for jobid, job in queue.items():
        comment = job.get("admin_comment") or ""
        if jobid in seen or not comment.startswith("hpccont:"):
            continue
        image, _, digest = comment[len("hpccont:"):].rpartition("@sha256:")
        rows.append({"job": jobid, "step": "-", "user": job.get("user_name", ""), "node": "-",
                     "state": _job_state(job), "image": image, "sha256": digest})
    if ns.json:
        for r in rows:
            sys.stdout.write(json.dumps(r, sort_keys=True) + "\n")
        return 0
    table = [[h for h, _ in COLUMNS]] + [[str(r.get(k, "") or "-") for _, k in COLUMNS]
                                         for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    for row in table:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n")
    return 0


def _job_state(job: dict) -> str:
    state = job.get("job_state", "")
    return state[0] if isinstance(state, list) and state else str(state or "?")


def _parse(p, argv):
    try:
        return p.parse_args(argv)
    except SystemExit as e:
        if e.code == 0:
            raise
        raise UsageError("bad arguments (see --help)") from None


def _slurm_conf_dir() -> str:
    return os.path.dirname(os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf")


def _plugstack_files(path: Optional[str]) -> List[str]:
    import glob
    if path:
        return [path]
    main_file = None
    conf = os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf"
    try:
        with open(conf) as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                if key.strip().lower() == "plugstackconfig":
                    main_file = value.strip()
    except OSError:
        pass
    main_file = main_file or os.path.join(_slurm_conf_dir(), "plugstack.conf")
    files = [main_file]
    try:
        with open(main_file) as f:
            for line in f:
                parts = line.split()
                if parts[:1] == ["include"] and len(parts) > 1:
                    files += sorted(glob.glob(parts[1]))
    except OSError:
        pass
    return files


def _accounting_from_plugstack(path: Optional[str]) -> str:
    from ..schedulers.slurm import PLUGSTACK_DEFAULTS
    for f in _plugstack_files(path):
        try:
            with open(f) as fh:
                lines = fh.readlines()
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) >= 2 and parts[1].endswith("hpccont_spank.so"):
                for a in parts[2:]:
                    if a.startswith("accounting="):
                        return a[len("accounting="):]
    return PLUGSTACK_DEFAULTS["accounting"]


# -- install-plugin ------------------------------------------------------------------------------
def default_source() -> str:
    """The plugin sources shipped in the package (hpccont/data/spank_plugin: in the repository a
    link to spank_plugin/, the one copy), else a source tree's spank_plugin/."""
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shipped = os.path.join(pkg, "data", "spank_plugin")
    if os.path.isfile(os.path.join(shipped, "Makefile")):
        return shipped
    return os.path.join(os.path.dirname(pkg), "spank_plugin")


def write_root_launcher(dest_dir: str, python: str) -> str:
    """The program the plugin runs (as root for accounting): an absolute interpreter in isolated
    mode (-IS: no PYTHON* variables, no user site, no .pth files) with this package first on
    sys.path, owned by root, 0755.  Never pip's console script, whose interpreter honours
    PYTHONPATH (a sitecustomize of the user's would run as root)."""
    from .launchers import package_parent, write_launchers
    if not os.path.isabs(python) or not os.access(python, os.X_OK):
        raise SchedulerError(f"--python must be an absolute path to an interpreter, not {python!r}")
    return write_launchers(dest_dir, package_parent(), python)["hpccont"]


def _install_file(src: str, dest: str) -> None:
    """Copy in place of ``dest``, root's 0755, by rename: a running slurmstepd or FUSE server
    keeps its mapped copy."""
    import shutil
    tmp = dest + ".new"
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)


def plugstack_line(so_path: str, values: Dict[str, str]) -> str:
    args = " ".join(f"{k}={v}" for k, v in values.items())
    return f"required {so_path} {args}\n"


def cmd_install_plugin(argv: List[str]) -> int:
    import argparse
    import shutil
    import subprocess
    import tempfile
    p = argparse.ArgumentParser(prog="hpccont slurm install-plugin")
    p.add_argument("--source", default=default_source(), help="spank_plugin source directory")
    p.add_argument("--prefix", default="/usr/local", help="installs PREFIX/lib/hpccont/hpccont_spank.so")
    p.add_argument("--plugstack", default=None,
                   help="file for the plugstack line (default: plugstack.conf.d/hpccont.conf "
                        "next to slurm.conf)")
    p.add_argument("--cli-filter", default=None,
                   help="where cli_filter.lua goes (default: next to slurm.conf)")
    p.add_argument("--no-cli-filter", action="store_true")
    p.add_argument("--slurm-include", default="/usr/include")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter of the launcher the plugin runs (default: this one)")
    p.add_argument("--image-dir", action="append", default=[])
    p.add_argument("--wrap-batch", default="yes")
    p.add_argument("--accounting", default=None)
    ns = _parse(p, argv)
    from ..schedulers.slurm import PLUGSTACK_DEFAULTS, parse_plugin_args
    if not os.path.isfile(os.path.join(ns.source, "Makefile")):
        raise SchedulerError(f"no SPANK plugin sources in {ns.source} (use --source)")
    if not os.path.isfile(os.path.join(ns.slurm_include, "slurm", "spank.h")):
        raise SchedulerError(f"{ns.slurm_include}/slurm/spank.h not found "
                             "(install libslurm-dev, or use --slurm-include)")
    dest_dir = os.path.join(ns.prefix, "lib", "hpccont")
    launcher = os.path.join(dest_dir, "bin", "hpccont")
    values = {"hpccont": launcher, "image_dir": ":".join(ns.image_dir),
              "wrap_batch": ns.wrap_batch,
              "accounting": ns.accounting or PLUGSTACK_DEFAULTS["accounting"]}
    values = {k: v for k, v in values.items() if v != ""}
    parse_plugin_args([f"{k}={v}" for k, v in values.items()])   # refuse bad values before writing
    if shutil.which("make") is None or shutil.which(os.environ.get("CC", "cc")) is None:
        raise SchedulerError("building the SPANK plugin needs make and a C compiler")
    with tempfile.TemporaryDirectory(prefix="hpccont-spank-") as build:
        r = subprocess.run(["make", "-C", ns.source, f"O={build}",
                            f"SLURM_INCLUDE={ns.slurm_include}"], capture_output=True, text=True)
        if r.returncode != 0:
            last = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
            raise SchedulerError(f"building the SPANK plugin failed: {last[0]}")
        os.makedirs(dest_dir, mode=0o755, exist_ok=True)
        write_root_launcher(os.path.dirname(launcher), ns.python)
        so = os.path.join(dest_dir, "hpccont_spank.so")
        _install_file(os.path.join(build, "hpccont_spank.so"), so)
    # The steps' containers are built by that launcher: the image server's caching adapter
    # must sit beside it too (the runtime looks beside the entry point), and so must the C
    # programs the plugin runs in its place when it can (launcher/step.c, launcher/account.c).
    from ..runtime.apply import FUSE_CACHE, beside_entry_point, installed_fuse_cache
    from ..schedulers.slurm.accounting import WRITER
    from ..schedulers.slurm.template import BUILDER
    said = [f"installed {so}", f"installed {launcher}"]
    beside = os.path.dirname(launcher)
    for name, found, without in (
            (FUSE_CACHE, installed_fuse_cache(), "steps' image servers run without it"),
            (BUILDER, beside_entry_point(BUILDER),
             "every step's container is planned and built by Python"),
            (WRITER, beside_entry_point(WRITER),
             "every step's accounting entry is written by Python")):
        if found and os.path.isfile(found):
            _install_file(found, os.path.join(beside, name))
            said.append(f"installed {beside}/{name}")
        else:
            said.append(f"no {name} beside this hpccont (make install builds it): {without}")
    plugstack = ns.plugstack or os.path.join(_slurm_conf_dir(), "plugstack.conf.d", "hpccont.conf")
    _write(plugstack, plugstack_line(so, values))
    sys.stdout.write("\n".join(said) + f"\nwrote {plugstack}\n")
    if not ns.no_cli_filter:
        filt = ns.cli_filter or os.path.join(_slurm_conf_dir(), "cli_filter.lua")
        with open(os.path.join(ns.source, "cli_filter.lua")) as f:
            _write(filt, f.read())
        sys.stdout.write(f"wrote {filt}\n")
        sys.stdout.write("slurm.conf needs: CliFilterPlugins=cli_filter/lua and "
                         "LaunchParameters=use_interactive_step (for salloc)\n")
    return 0


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


SUBCOMMANDS = {
    "task": cmd_task,
    "account": cmd_account,
    "prepare": cmd_prepare,
    "jobs": cmd_jobs,
    "install-plugin": cmd_install_plugin,
}
