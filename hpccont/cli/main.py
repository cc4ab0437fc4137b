"""Entry points: ``hpccont``, ``container-exec`` and ``run-singularity``.

Sub-commands live in their own modules and are imported only when used, so that
``hpccont exec`` (on the hot path of every task of every job) imports nothing it does not need.
Every HpccontError becomes one line on stderr and the error's exit status.
"""
import os
import sys

# sub-command -> module with ``main(argv) -> int``
COMMANDS = {
    "exec": "hpccont.cli.launch",
    "run": "hpccont.cli.launch",
    "shell": "hpccont.cli.launch",
    "test": "hpccont.cli.launch",
    "inspect": "hpccont.cli.inspect_cmd",
    "sif": "hpccont.cli.sif_cmd",
    "build": "hpccont.cli.build_cmd",
    "config": "hpccont.cli.config_cmd",
    "instance": "hpccont.cli.instance_cmd",
    "overlay": "hpccont.cli.overlay_cmd",
    "slurm": "hpccont.cli.slurm_cmd",
    "pbs": "hpccont.cli.pbs_cmd",
    "mpi": "hpccont.cli.mpi_cmd",
    "nv": "hpccont.cli.nv_cmd",
    "module": "hpccont.cli.module_cmd",
    "sign": "hpccont.cli.sign_cmd",
    "verify": "hpccont.cli.sign_cmd",
    "key": "hpccont.cli.sign_cmd",
    "doctor": "hpccont.doctor",
    "pull": "hpccont.cli.pull_cmd",
    "push": "hpccont.cli.push_cmd",
    "registry": "hpccont.cli.registry_cmd",
    "cache": "hpccont.cli.cache_cmd",
    "compat": "hpccont.cli.compat_cmd",
    "completion": "hpccont.cli.compat_cmd",
    "run-help": "hpccont.cli.compat_cmd",
}

# Invoked under one of these names (``hpccont compat install DIR``), the program is Apptainer's
# CLI: ``--version`` says the Apptainer release whose command line it follows.
COMPAT_NAMES = ("apptainer", "singularity")
APPTAINER_VERSION = "1.3.6"

# Global flags (Apptainer's): name -> message level, as its setSylogMessageLevel orders them
# (debug wins over verbose over quiet over silent).  Also APPTAINER_<KEY>/SINGULARITY_<KEY>.
GLOBAL_FLAGS = {"-d": "debug", "--debug": "debug", "-v": "verbose", "--verbose": "verbose",
                "-q": "quiet", "--quiet": "quiet", "-s": "silent", "--silent": "silent",
                "--nocolor": "nocolor"}
LEVELS = (("debug", 5), ("verbose", 4), ("quiet", -1), ("silent", -3))
# Commands whose process ends with them: once their output is flushed, the interpreter's
# teardown (freeing every module and object, ~8 ms) is skipped.  A warm pull, all of it, takes
# ~60 ms; there is nothing left to close (files, sockets and threads are done with).
QUICK_EXIT = ("pull",)

# The message level of this run: 1 normal, -1 quiet (no notes), -3 silent (errors only),
# 4 verbose, 5 debug.  Read by the sub-commands (cli/launch.py).
MESSAGE_LEVEL = [1]

USAGE = """usage: hpccont COMMAND [options] ...

Run containers:
  exec IMAGE CMD [ARGS]   run a command in the image
  run IMAGE [ARGS]        run the image's runscript
  shell IMAGE             interactive shell in the image
  test IMAGE              run the image's test script
  instance ...            start/run/list/stats/stop background instances
  overlay create FILE     an ext3 overlay image, or a SIF's overlay partition
Images:
  build OUT SRC           build an image (SIF, or --sandbox directory)
  inspect IMAGE           labels, definition file, runscript, environment
  sif list|info|dump      SIF objects, like 'apptainer sif'
  sign|verify|key         SIF signatures (key newpair, sign --key, verify --key)
  pull [OUT] URI          docker://, oras:// or https:// image to a SIF (cached)
  push IMAGE oras://...   a SIF into an OCI registry (Apptainer's media types)
  registry login|logout|list   registry credentials
  cache list|clean        the image cache
Site and schedulers:
  config show             effective site configuration
  slurm ...               SPANK plugin install, job accounting
  pbs ...                 PBS hook support
  mpi check IMAGE         host and container MPI, chosen mode
  nv list                 what --nv would bind on this node
  module ...              generate Lmod/Tcl modules for images
  doctor                  check this node's set-up (namespaces, FUSE, Slurm plugin...)

'hpccont COMMAND --help' for a command's options.
"""


def _debug_wanted(argv) -> bool:
    return "--debug" in argv or os.environ.get("HPCCONT_DEBUG") not in (None, "", "0")


def run_module(module_name: str, label: str, name: str, argv: list) -> int:
    """Import a sub-command's module and run ``main(name, argv)``, turning errors into one line."""
    from ..errors import HpccontError  # cheap: no dependencies
    try:
        module = __import__(module_name, fromlist=["main"])
        return module.main(name, argv)
    except HpccontError as e:
        sys.stderr.write(f"{label}: {e.one_line()}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"{label}: interrupted\n")
        return 130
    except BrokenPipeError:
        return 141
    except Exception as e:  # a bug: still one line unless the user asked for details
        if _debug_wanted(argv):
            raise
        sys.stderr.write(f"{label}: internal error: {type(e).__name__}: {e} "
                         "(rerun with --debug for details)\n")
        return 255


def run_command(name: str, argv: list, prog: str = "hpccont") -> int:
    return run_module(COMMANDS[name], f"{prog} {name}", name, argv)


def program_name(argv0: str) -> str:
    """``apptainer`` or ``singularity`` when started under that name, else ``hpccont``."""
    base = os.path.basename(argv0 or "")
    return base if base in COMPAT_NAMES else "hpccont"


def global_options(argv: list, environ=os.environ) -> tuple:
    """Leading global flags -> (their names, the rest of argv); APPTAINER_QUIET=1 and the
    like (SINGULARITY_ when the APPTAINER_ one is unset) count as the flag."""
    seen = set()
    i = 0
    while i < len(argv) and argv[i] in GLOBAL_FLAGS:
        seen.add(GLOBAL_FLAGS[argv[i]])
        i += 1
    for name in set(GLOBAL_FLAGS.values()) - seen:
        key = name.upper()
        value = environ.get(f"APPTAINER_{key}", environ.get(f"SINGULARITY_{key}", "")).strip()
        if value and value.lower() not in ("0", "false", "no"):
            seen.add(name)
    return seen, argv[i:]


def _quick_exit(rc: int) -> None:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return             # the normal exit reports it
    os._exit(rc)


def main(argv=None, prog=None) -> int:
    as_program = argv is None      # started as the program, not called by other code
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or program_name(sys.argv[0] if sys.argv else "")
    flags, argv = global_options(argv)
    MESSAGE_LEVEL[0] = next((level for name, level in LEVELS if name in flags), 1)
    if not argv or argv[0] in ("-h", "--help", "help"):
        if prog != "hpccont" and len(argv) > 1 and argv[1] in COMMANDS:
            return run_command(argv[1], ["--help"], prog)
        sys.stdout.write(USAGE if prog == "hpccont" else USAGE.replace("hpccont", prog))
        return 0 if argv else 2
    if argv[0] in ("--version", "version"):
        if prog != "hpccont":
            # as Apptainer: "apptainer version X" for --version, the bare number for `version`
            sys.stdout.write(f"apptainer version {APPTAINER_VERSION}\n" if argv[0] == "--version"
                             else f"{APPTAINER_VERSION}\n")
            return 0
        from .. import __version__
        sys.stdout.write(f"hpccont {__version__}\n")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        sys.stderr.write(f"{prog}: unknown command {name!r} (see '{prog} --help')\n")
        return 2
    rest = argv[1:]
    if "debug" in flags and COMMANDS[name] == "hpccont.cli.launch" and "--debug" not in rest:
        rest = ["--debug", *rest]
    rc = run_command(name, rest, prog)
    if as_program and name in QUICK_EXIT:
        _quick_exit(rc)
    return rc


def container_exec_main(argv=None) -> int:
    """``container-exec [IMAGE] CMD...``: what a launcher (mpirun, srun) starts per rank."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_module("hpccont.cli.container_exec", "container-exec", "container-exec", argv)


def run_singularity_main(argv=None) -> int:
    """``#!/usr/bin/env run-singularity`` launch line of SIF files: run the image's runscript.

    The kernel calls ``run-singularity IMAGE ARGS...`` when an executable SIF is started.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        sys.stderr.write("run-singularity: usage: run-singularity IMAGE [ARGS]\n")
        return 2
    return run_module(COMMANDS["run"], "run-singularity", "run", ["--", *argv])


if __name__ == "__main__":
    sys.exit(main())
