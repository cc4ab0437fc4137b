"""``hpccont module``: container modules for Lmod / Environment Modules.

  generate IMAGE --name NAME/VERSION --modulepath DIR [--command CMD[=PATH] ...] [--nv]
           [--bind SPEC ...] [--tcl] [--hpccont PATH] [--container-exec PATH]
  generate-all DIR --modulepath OUT [--tcl] [--nv] [--bind SPEC ...] [--hpccont PATH]
  check --modulepath OUT

and what the generated ``image-*`` wrappers call:

  mpi --image IMG --container-exec PATH [EXEC-OPTIONS] -- [LAUNCHER-OPTIONS --] CMD [ARGS]
  update --module NAME/VERSION --central IMG --copy-name FILE [--check] [--force]
  info [--module NAME/VERSION] [--image IMG] [--json]
"""
import argparse
import os
import sys
from typing import List

from ..errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, the CLI's exit status for usage errors
        raise UsageError(f"{message} (see 'hpccont module {self.prog.split()[-1]} --help')")


def _exec_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nv", action="store_true", help="run with --nv (NVIDIA GPUs)")
    p.add_argument("--bind", "-B", action="append", default=[], metavar="SPEC",
                   help="bind SRC[:DST[:ro|rw]] in every wrapper (repeatable, comma lists)")


def _paths(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hpccont", metavar="PATH", help="hpccont the wrappers call "
                   "(default: this one)")
    p.add_argument("--container-exec", metavar="PATH", help="container-exec image-mpi starts "
                   "(default: next to hpccont)")


def _binds(values: List[str]) -> List[str]:
    return [b for v in values for b in v.split(",") if b]


def build_parser() -> argparse.ArgumentParser:
    top = _Parser(prog="hpccont module", description="container modules for Lmod")
    sub = top.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)

    g = sub.add_parser("generate", help="modulefile + wrappers for one image")
    g.add_argument("image")
    g.add_argument("--name", required=True, metavar="NAME/VERSION")
    g.add_argument("--command", action="append", default=[], metavar="CMD[=PATH]",
                   help="wrapper CMD running PATH (default CMD) in the image; repeatable. "
                   "Default: the image's org.hpccont.commands label, else its SCIF apps")
    g.add_argument("--modulepath", required=True, metavar="DIR")
    g.add_argument("--tcl", action="store_true", help="Tcl modulefile (Environment Modules)")
    _exec_options(g)
    _paths(g)

    a = sub.add_parser("generate-all", help="one module per image in a directory")
    a.add_argument("directory", metavar="DIR", nargs="?")
    a.add_argument("--modulepath", required=True, metavar="OUT")
    a.add_argument("--tcl", action="store_true")
    _exec_options(a)
    _paths(a)

    c = sub.add_parser("check", help="list stale or broken generated modules")
    c.add_argument("--modulepath", required=True, metavar="OUT")

    m = sub.add_parser("mpi", help="what image-mpi runs")
    m.add_argument("--image", required=True)
    m.add_argument("--container-exec", required=True)
    _exec_options(m)
    m.add_argument("--dry-run", action="store_true", help="print the launch command only")

    u = sub.add_parser("update", help="what image-update runs")
    u.add_argument("--module", required=True)
    u.add_argument("--central", required=True)
    u.add_argument("--copy-name", required=True)
    u.add_argument("--check", action="store_true", help="only say whether an update exists "
                   "(exit 1 when it does)")
    u.add_argument("--force", action="store_true", help="copy even when the digests match")

    i = sub.add_parser("info", help="what image-info runs")
    i.add_argument("--module")
    i.add_argument("--image")
    i.add_argument("--json", action="store_true")
    return top


def cmd_generate(args) -> int:
    from ..modules.generate import apply_plan, make_spec, plan_module
    from ..modules.metadata import parse_command, read_metadata
    meta = read_metadata(args.image)
    spec = make_spec(args.name, meta, commands=[parse_command(c) for c in args.command],
                     nv=args.nv, binds=_binds(args.bind), tcl=args.tcl, hpccont=args.hpccont,
                     container_exec=args.container_exec)
    plan = plan_module(spec, args.modulepath)
    changed = apply_plan(plan)
    state = "written" if changed else "unchanged"
    sys.stdout.write(f"{spec.name}: {plan.modulefile} ({state}); wrappers in {plan.bindir}: "
                     f"{' '.join(c.name for c in spec.commands)}\n")
    return 0


def cmd_generate_all(args) -> int:
    from ..modules.generate_all import generate_all
    directory = args.directory
    if not directory:
        from ..config import load
        directory = load()["modules"]["central_image_dir"]
        if not directory:
            raise UsageError("name the image directory (or set modules.central_image_dir)")
    result = generate_all(directory, args.modulepath, tcl=args.tcl, nv=args.nv,
                          binds=_binds(args.bind), hpccont=args.hpccont,
                          container_exec=args.container_exec)
    for o in result.outcomes:
        line = f"{o.status:<9} {o.name or '-':<30} {o.image}"
        sys.stdout.write(line + (f": {o.detail}" if o.detail else "") + "\n")
    if not result.outcomes:
        sys.stdout.write(f"no images in {directory}\n")
    return 1 if result.failed else 0


def cmd_check(args) -> int:
    from ..modules.check import check_tree, orphan_wrappers
    if not os.path.isdir(args.modulepath):
        raise UsageError(f"module tree {args.modulepath} does not exist")
    modulepath = os.path.abspath(args.modulepath)
    states = check_tree(modulepath)
    bad = 0
    for s in states:
        for p in s.problems:
            sys.stdout.write(f"{s.name}: {p}\n")
        bad += s.status != "ok"
    for d in orphan_wrappers(modulepath, states):
        sys.stdout.write(f"{d}: stale: wrappers of a module that no longer exists\n")
        bad += 1
    ok = sum(s.status == "ok" for s in states)
    sys.stdout.write(f"{len(states)} modules, {ok} ok" + (f", {bad} problems" if bad else "") + "\n")
    return 1 if bad else 0


def cmd_mpi(args, rest: List[str]) -> int:
    from ..modules.mpi_launch import exec_launcher, mpi_argv
    opts = (["--nv"] if args.nv else []) + [x for b in _binds(args.bind) for x in ("--bind", b)]
    argv = mpi_argv(rest, args.image, args.container_exec, opts, os.environ)
    if args.dry_run:
        import shlex
        sys.stdout.write(" ".join(shlex.quote(a) for a in argv) + "\n")
        return 0
    return exec_launcher(argv)


def cmd_update(args) -> int:
    from ..config import load
    from ..modules import update
    config = load()
    central = update.resolve_central(args.central, config)
    local = update.local_copy_path(args.module, args.copy_name, os.environ)
    plan = update.plan_update(central, local, force=args.force)
    if plan.action == "up-to-date":
        sys.stdout.write(f"{local} is up to date ({plan.central_digest})\n")
        return 0
    if args.check:
        sys.stdout.write(f"update available for {local}: {plan.reason}\n")
        return 1
    status = update.copy_verified(plan, required_signature=config["signatures"]["require"],
                                  keyring=bool(config["signatures"]["keyring"]))
    sys.stdout.write(f"updated {local} from {central} ({plan.central_digest}, signature: "
                     f"{status})\n")
    if os.environ.get("HPCCONT_MODULE") == args.module and os.environ.get("HPCCONT_IMAGE") != local:
        sys.stdout.write(f"run 'module load {args.module}' again to use your copy\n")
    return 0


def cmd_info(args) -> int:
    from ..modules.info import format_info, image_info
    image = args.image or os.environ.get("HPCCONT_IMAGE")
    if not image:
        raise UsageError("no container module loaded (HPCCONT_IMAGE is not set)")
    module = args.module or os.environ.get("HPCCONT_MODULE")
    sys.stdout.write(format_info(image_info(image, module, os.environ), args.json))
    return 0


def main(name: str, argv: List[str]) -> int:
    argv = list(argv)
    rest: List[str] = []
    if argv[:1] == ["mpi"] and "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    args = parser.parse_args(argv)
    handlers = {"generate": cmd_generate, "generate-all": cmd_generate_all, "check": cmd_check,
                "update": cmd_update, "info": cmd_info}
    if args.action == "mpi":
        return cmd_mpi(args, rest)
    return handlers[args.action](args)
