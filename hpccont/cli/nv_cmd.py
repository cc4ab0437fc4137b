"""``hpccont nv list``: what ``--nv`` would bind on this node, and why (for admins debugging a node).

Runs exactly the discovery a launch runs (hpccont.host.nvidia.discover), with this shell's
environment deciding the GPUs, and prints the report.
"""
import argparse
import json
import os
import sys


from ..errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, through the CLI's error path
        raise UsageError(f"{message} (see 'hpccont nv --help')")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hpccont nv", description="NVIDIA GPU support (--nv).")
    sub = p.add_subparsers(dest="action", parser_class=_Parser)
    ls = sub.add_parser("list", help="what --nv would bind on this node")
    ls.add_argument("--json", action="store_true", help="machine-readable report")
    ls.add_argument("--private-dev", action="store_true",
                    help="as for a container without the host's /dev (GPUs renumbered from 0); "
                         "default: the site setting mounts.dev")
    return p


def main(name: str, argv: list) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed usage; keep its status
        return int(e.code or 0)
    if args.action != "list":
        raise UsageError("usage: hpccont nv list [--json] [--private-dev]")
    from ..config import load
    from ..host.nvidia import discover
    config = load(os.environ)
    private_dev = args.private_dev or config["mounts"]["dev"] is not True
    report = discover(config, os.environ, private_dev=private_dev)
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_report(report))
    return 0 if not report.unavailable else 1


def format_report(report) -> str:
    from ..host.nvidia import BIN_DIR, LIB_DIR
    out = []
    if report.unavailable:
        return f"no GPU support on this node: {report.unavailable}\n"
    drv = report.driver
    out.append(f"driver version: {drv.version}")
    out.append(f"library list:   {report.liblist}")
    sel = report.selection
    chosen = {g.uuid for g in sel.gpus} if sel else set()
    out.append(f"GPUs ({sel.source if sel else '-'}):")
    for g in drv.gpus:
        mark = "bind" if g.uuid in chosen else "not for this job"
        out.append(f"  index {g.index}  minor {g.minor}  {g.uuid}  {g.name}  [{mark}]")
    out += [f"  note: {n}" for n in list(drv.notes) + (sel.notes if sel else [])]
    out.append(f"libraries (into {LIB_DIR}, prepended to LD_LIBRARY_PATH):")
    out += [f"  {c.name:<34} <- {c.source}  ({c.why})" for c in report.libraries]
    out += [f"  skipped {s.name} at {s.path}: {s.reason}" for s in report.skipped]
    if report.missing_libraries:
        out.append(f"  not in the ldconfig cache: {' '.join(report.missing_libraries)}")
    out.append(f"binaries (into {BIN_DIR}):")
    out += [f"  {n:<34} <- {p}" for n, p in sorted(report.binaries.items())]
    if report.missing_binaries:
        out.append(f"  not on PATH: {' '.join(report.missing_binaries)}")
    out.append("config files:")
    out += [f"  {p}" for p in report.configs]
    out.append("devices:")
    out += [f"  {p}" for p in report.devices]
    out += [f"  missing {p}" for p in report.missing_devices]
    out.append("environment inside:")
    out += [f"  {k}={v}" for k, v in sorted(report.env.items())] or ["  (unchanged)"]
    return "\n".join(out) + "\n"
