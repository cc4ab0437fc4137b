"""``hpccont push [options] IMAGE.sif oras://REGISTRY/REPO[:TAG]``: a SIF into an OCI registry.

The SIF is stored as an OCI artifact with Apptainer's media types
(application/vnd.sylabs.sif.layer.v1.sif), so ``apptainer pull oras://...`` reads it, and
``hpccont pull oras://...`` gives back the same bytes.
"""
import argparse
from typing import List

from ..errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{message} (see 'hpccont push --help')")


def main(name: str, argv: List[str]) -> int:
    p = _Parser(prog="hpccont push", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", metavar="IMAGE.sif")
    p.add_argument("uri", metavar="oras://REGISTRY/REPO[:TAG]")
    p.add_argument("--nohttps", action="store_true", help="plain HTTP to the registry")
    p.add_argument("-q", "--quiet", action="store_true", help="no result line")
    p.add_argument("--debug", action="store_true", help="tracebacks for internal errors")
    ns = p.parse_args(argv)
    if not ns.uri.startswith("oras://"):
        raise UsageError(f"{ns.uri}: hpccont push needs an oras:// URI "
                         "(container images: push them with skopeo or docker)")
    from ..image.registry import oras, reference
    ref = reference.parse(ns.uri)
    digest = oras.push(ns.image, ref, nohttps=ns.nohttps, quiet=ns.quiet)
    if not ns.quiet:
        print(f"pushed {ns.image} to {ref.uri()} ({digest})")
    return 0
