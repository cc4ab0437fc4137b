"""``hpccont pull [options] [OUT.sif] URI``: an image from a registry or a URL, as a SIF.

URI: ``docker://[HOST[:PORT]/]NAME[:TAG|@DIGEST]`` (Docker Hub when no host), ``oras://HOST/
NAME[:TAG]`` (a SIF pushed as an OCI artifact, by hpccont or Apptainer), ``https://...`` (a
SIF file).  OUT defaults to NAME_TAG.sif (in --dir).  Images come from the cache when it has
them (HPCCONT_CACHEDIR, default ~/.cache/hpccont): a second pull downloads nothing.
"""
import argparse
import os
from typing import List

from ..errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{message} (see 'hpccont pull --help')")


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hpccont pull", description=__doc__,
                usage="hpccont pull [options] [OUT.sif] URI",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("args", nargs="+", metavar="[OUT] URI")
    p.add_argument("-F", "--force", action="store_true", help="overwrite OUT if it exists")
    p.add_argument("--arch", default=None, metavar="ARCH[/VARIANT]",
                   help="platform to pick from a multi-architecture image (default: this host's)")
    p.add_argument("--dir", default=None, metavar="DIR", help="directory to write OUT in")
    p.add_argument("--disable-cache", action="store_true",
                   help="neither read nor fill the cache (a temporary one is used and removed)")
    p.add_argument("--nohttps", action="store_true", help="plain HTTP to the registry")
    p.add_argument("--tmpdir", default=None, metavar="DIR", help="work directory of the conversion")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress")
    p.add_argument("--debug", action="store_true", help="tracebacks for internal errors")
    return p


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


def main(name: str, argv: List[str]) -> int:
    ns = make_parser().parse_args(argv)
    if len(ns.args) > 2:
        raise UsageError("expected [OUT] URI (see 'hpccont pull --help')")
    out, uri = (ns.args if len(ns.args) == 2 else (None, ns.args[0]))
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
    path = output_path(out, uri, ns.dir)
    fetch_out.check_out(path, ns.force)
    fetch_out.pull(uri, path, arch=ns.arch, nohttps=ns.nohttps, quiet=ns.quiet,
                   disable_cache=ns.disable_cache, tmpdir=ns.tmpdir)
    return 0
