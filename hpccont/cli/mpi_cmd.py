"""``hpccont mpi check [--mode hybrid|bind] [--json] IMAGE``: both sides of an MPI launch.

Prints the host's MPI installations and PMI libraries, the launcher this process runs under
(if any), the image's MPI, what each mode would decide, and the mode that would be used and
why.  When the chosen mode would be refused, the report is still printed and the reason is the
one-line error, so scripts can test the exit status.
"""
import argparse
import os
import sys
from typing import List

from ..errors import HostError, UsageError

USAGE = "hpccont mpi check [--mode hybrid|bind] [--json] IMAGE"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (usage: {USAGE})")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hpccont mpi", description="host and container MPI, chosen mode")
    sub = p.add_subparsers(dest="sub", required=True)
    check = sub.add_parser("check", help="show host and container MPI and the mode chosen")
    check.add_argument("--mode", choices=("hybrid", "bind"),
                       help="mode to judge (default: $HPCCONT_CONTAINER_MPI, else mpi.default_mode)")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument("image")
    return p


def chosen_mode(explicit, environ, cfg) -> tuple:
    """(mode, why) in order of precedence."""
    if explicit:
        return explicit, "--mode"
    env = environ.get("HPCCONT_CONTAINER_MPI", "")
    if env in ("hybrid", "bind"):
        return env, "HPCCONT_CONTAINER_MPI"
    return cfg["mpi"]["default_mode"], "site config mpi.default_mode"


def _line(label: str, values: List[str]) -> str:
    values = values or ["none found"]
    pad = " " * 16
    return f"{label:<16}{values[0]}\n" + "".join(f"{pad}{v}\n" for v in values[1:])


def main(name: str, argv: list) -> int:
    from .. import config
    from ..host import mpi
    from ..image.source import open_image
    args = _parser().parse_args(argv)
    cfg = config.load()
    image = open_image(args.image)
    mode, why = chosen_mode(args.mode, os.environ, cfg)
    reports = {m: mpi.inspect(image, cfg, os.environ, m) for m in ("hybrid", "bind")}
    chosen = reports[mode]
    bind_summary = ""
    if reports["bind"].host and reports["bind"].verdict.level != "refuse":
        binds = mpi.dependency_closure(mpi.HostView(), reports["bind"].host,
                                       cfg["mpi"]["extra_libs"])
        devs = mpi.devices(mpi.HostView(), cfg)
        bind_summary = (f"{len(binds.libs)} libraries, {len(binds.plugin_dirs)} plug-in "
                        f"directories, {len(devs)} devices -> {mpi.PRIVATE_LIB}")
    if args.json:
        import json
        out = {"host": [h.to_dict() for h in chosen.hosts],
               "container": [c.to_dict() for c in chosen.containers],
               "launcher": chosen.launcher[0] if chosen.launcher else None,
               "verdicts": {m: r.verdict.to_dict() for m, r in reports.items()},
               "mode": mode, "mode_from": why, "bind": bind_summary}
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        text = _line("host MPI:", [f"{h.describe()} [{h.source}]" for h in chosen.hosts])
        pmi = chosen.hosts[0].pmi if chosen.hosts else mpi.host_pmi(mpi.HostView())
        text += _line("host PMI:", [", ".join(pmi)] if pmi else [])
        text += _line("launcher:", [chosen.launcher[1]] if chosen.launcher
                      else ["none (not started by mpirun/srun)"])
        text += _line("container MPI:", [c.describe() for c in chosen.containers])
        for m, r in reports.items():
            text += _line(f"{m}:", [f"{r.verdict.level}: {r.verdict.reason}"])
        if bind_summary:
            text += _line("bind would add:", [bind_summary])
        text += _line("mode:", [f"{mode} (from {why}): {chosen.verdict.level}"])
        sys.stdout.write(text)
    sys.stdout.flush()
    if chosen.verdict.level == "refuse":
        raise HostError(f"--mpi {mode}: {chosen.verdict.reason}")
    return 0
