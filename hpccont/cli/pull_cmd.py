"""``hpccont pull [options] [OUT.sif] URI``: an image from a registry or a URL, as a SIF.

URI: ``docker://[HOST[:PORT]/]NAME[:TAG|@DIGEST]`` (Docker Hub when no host), ``oras://HOST/
NAME[:TAG]`` (a SIF pushed as an OCI artifact, by hpccont or Apptainer), ``https://...`` (a
SIF file).  OUT defaults to NAME_TAG.sif (in --dir).  Images come from the cache when it has
them (HPCCONT_CACHEDIR, default ~/.cache/hpccont): a second pull downloads nothing.
"""
from __future__ import annotations

import os

from ..errors import UsageError

# (flags, name, takes a value, metavar, help): the one list of pull's options.  A pull parses
# them by hand (``parse``); argparse, ~10 ms of imports on a pull that may take 0.1 s in all,
# only writes --help and feeds shell completion (``make_parser``).
OPTIONS = (
    (("-F", "--force"), "force", False, None, "overwrite OUT if it exists"),
    (("--arch",), "arch", True, "ARCH[/VARIANT]",
     "platform to pick from a multi-architecture image (default: this host's)"),
    (("--dir",), "dir", True, "DIR", "directory to write OUT in"),
    (("--disable-cache",), "disable_cache", False, None,
     "neither read nor fill the cache (a temporary one is used and removed)"),
    (("--nohttps",), "nohttps", False, None, "plain HTTP to the registry"),
    (("--tmpdir",), "tmpdir", True, "DIR", "work directory of the conversion"),
    (("-q", "--quiet"), "quiet", False, None, "no progress"),
    (("--debug",), "debug", False, None, "tracebacks for internal errors"),
)
USAGE = "hpccont pull [options] [OUT.sif] URI"


def make_parser():
    import argparse
    p = argparse.ArgumentParser(prog="hpccont pull", description=__doc__, usage=USAGE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("args", nargs="+", metavar="[OUT] URI")
    for flags, name, value, metavar, text in OPTIONS:
        if value:
            p.add_argument(*flags, dest=name, default=None, metavar=metavar, help=text)
        else:
            p.add_argument(*flags, dest=name, action="store_true", help=text)
    return p


def parse(argv: list[str]) -> dict:
    """{option name: value, "args": [positionals]}; --help prints the help and exits."""
    by_flag = {f: (name, value) for flags, name, value, _, _ in OPTIONS for f in flags}
    got: dict = {name: (None if value else False) for _, name, value, _, _ in OPTIONS}
    got["args"] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            got["args"] += argv[i:]
            break
        if arg in ("-h", "--help"):
            make_parser().print_help()
            raise SystemExit(0)
        if not arg.startswith("-") or arg == "-":
            got["args"].append(arg)
            continue
        flag, eq, inline = arg.partition("=")
        if flag not in by_flag:
            raise UsageError(f"unknown option {flag} (see 'hpccont pull --help')")
        name, value = by_flag[flag]
        if not value:
            if eq:
                raise UsageError(f"option {flag} takes no value (see 'hpccont pull --help')")
            got[name] = True
        elif eq:
            got[name] = inline
        elif i < len(argv):
            got[name], i = argv[i], i + 1
        else:
            raise UsageError(f"option {flag} needs a value (see 'hpccont pull --help')")
    if not got["args"]:
        raise UsageError(f"expected [OUT] URI (usage: {USAGE})")
    return got


def output_path(out, uri: str, directory) -> str:
    if out is None:
        if uri.startswith(("https://", "http://")):
            import urllib.parse
            out = os.path.basename(urllib.parse.urlsplit(uri).path) or "image.sif"
        else:
            from ..image.registry import reference
            out = reference.parse(uri).default_filename()
    if directory:
        if not os.path.isdir(directory):
            raise UsageError(f"--dir {directory}: not a directory")
        out = os.path.join(directory, out)
    return os.path.abspath(out)


def main(name: str, argv: list[str]) -> int:
    opts = parse(argv)
    if len(opts["args"]) > 2:
        raise UsageError("expected [OUT] URI (see 'hpccont pull --help')")
    out, uri = (opts["args"] if len(opts["args"]) == 2 else (None, opts["args"][0]))
    if not uri.startswith(("docker://", "oras://", "https://", "http://")):
        if uri.startswith(("library://", "shub://")):
            raise UsageError(f"{uri}: library:// and shub:// are not supported; use docker://, "
                             "oras:// or https://")
        raise UsageError(f"{uri}: expected docker://, oras:// or https:// URI")
    import signal

    def _terminated(signum, frame):     # scancel, timeout: clean up as for ^C
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _terminated)
    from ..image.registry import fetch_out
    path = output_path(out, uri, opts["dir"])
    fetch_out.check_out(path, opts["force"])
    fetch_out.pull(uri, path, arch=opts["arch"], nohttps=opts["nohttps"], quiet=opts["quiet"],
                   disable_cache=opts["disable_cache"], tmpdir=opts["tmpdir"])
    return 0
