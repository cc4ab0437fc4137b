"""``hpccont build [options] OUT SRC``: build a SIF (or a --sandbox directory).

SRC: a definition file, a sandbox directory, a SIF or squashfs image, an offline reference
(docker-archive:FILE, oci-archive:FILE[:TAG], oci:DIR[:TAG], localimage:PATH), or a registry
image (docker://[HOST/]NAME[:TAG], oras://HOST/NAME[:TAG]).
"""
import argparse
import os
import shlex
from pathlib import Path
from typing import Dict, List

from ..errors import UsageError
from ..image.squashfs import site_compression_args

SECTION_CHOICES = ("setup", "files", "post", "environment", "runscript", "startscript", "test",
                   "labels", "help", "none", "all")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, UsageError's exit status, no usage dump
        raise UsageError(f"{message} (see 'hpccont build --help')")


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hpccont build", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", metavar="OUT", help="image to write (SIF, or directory with --sandbox)")
    p.add_argument("src", metavar="SRC", help="definition file, image or offline reference")
    p.add_argument("-s", "--sandbox", action="store_true", help="write a sandbox directory")
    p.add_argument("-F", "--force", action="store_true", help="overwrite OUT if it exists")
    p.add_argument("-T", "--notest", action="store_true", help="skip the %%test section")
    p.add_argument("--section", action="append", default=[], metavar="NAME[,NAME]",
                   help="run only these sections (" + ", ".join(SECTION_CHOICES) + ")")
    p.add_argument("-u", "--update", action="store_true",
                   help="run sections into an existing sandbox OUT, skipping the bootstrap")
    p.add_argument("--mksquashfs-args", default="", metavar="ARGS",
                   help="extra mksquashfs arguments, one shell-quoted string")
    p.add_argument("--tmpdir", metavar="DIR", default=None,
                   help="work directory (default $HPCCONT_TMPDIR, then $TMPDIR, then /tmp)")
    p.add_argument("-f", "--fakeroot", action="store_true",
                   help="build as root inside a user namespace (implied for non-root users)")
    p.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="value for a {{ KEY }} template variable")
    p.add_argument("--build-arg-file", action="append", default=[], metavar="FILE",
                   help="file of KEY=VALUE lines for template variables")
    p.add_argument("--no-reproducible", dest="reproducible", action="store_false",
                   help="keep real file times (default: what the build writes, and what is newer "
                        "than a given SOURCE_DATE_EPOCH, gets SOURCE_DATE_EPOCH or 0)")
    p.add_argument("--nohttps", action="store_true",
                   help="docker:// and oras:// sources over plain HTTP")
    p.add_argument("--arch", default="", metavar="ARCH[/VARIANT]",
                   help="platform of a multi-architecture docker:// image (default: the host's)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.add_argument("--debug", action="store_true", help="tracebacks for internal errors")
    return p


def parse_build_args(items: List[str], files: List[str]) -> Dict[str, str]:
    """--build-arg-file values first, then --build-arg ones (the command line wins)."""
    out: Dict[str, str] = {}
    for path in files:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--build-arg-file {path}: cannot read: {e}") from None
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            out.update([_key_value(line, f"{path}:{n}")])
    for item in items:
        out.update([_key_value(item, "--build-arg")])
    return out


def _key_value(text: str, where: str):
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or not key.replace("_", "a").replace("-", "a").replace(".", "a").isalnum():
        raise UsageError(f"{where}: expected KEY=VALUE, got {text!r}")
    return key, value


def parse_sections(items: List[str]) -> tuple:
    names = [n.strip() for item in items for n in item.split(",") if n.strip()]
    for n in names:
        if n not in SECTION_CHOICES:
            raise UsageError(f"--section {n}: unknown section (known: {', '.join(SECTION_CHOICES)})")
    return tuple(n for n in names if n != "all") if "all" not in names else ()


def options_from_args(ns: argparse.Namespace, environ=os.environ):
    from ..image.build.builder import BuildOptions
    try:
        mksquashfs_args = shlex.split(ns.mksquashfs_args)
    except ValueError as e:
        raise UsageError(f"--mksquashfs-args: {e}") from None
    tmpdir = ns.tmpdir or environ.get("HPCCONT_TMPDIR") or environ.get("TMPDIR") or "/tmp"
    epoch_text = environ.get("SOURCE_DATE_EPOCH", "0") or "0"
    if not epoch_text.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH must be a number of seconds, not {epoch_text!r}")
    if "-comp" not in mksquashfs_args:
        mksquashfs_args = site_compression_args() + mksquashfs_args
    return BuildOptions(
        out=ns.out, source=ns.src, sandbox=ns.sandbox, force=ns.force, notest=ns.notest,
        sections=parse_sections(ns.section), update=ns.update, mksquashfs_args=mksquashfs_args,
        tmpdir=tmpdir, fakeroot=ns.fakeroot or os.geteuid() != 0,
        build_args=parse_build_args(ns.build_arg, ns.build_arg_file),
        reproducible=ns.reproducible, source_date_epoch=int(epoch_text),
        source_date_epoch_given=bool(environ.get("SOURCE_DATE_EPOCH")), quiet=ns.quiet,
        nohttps=getattr(ns, "nohttps", False), arch=getattr(ns, "arch", "") or "")


def main(name: str, argv: List[str]) -> int:
    ns = make_parser().parse_args(argv)
    from ..image.build.builder import build
    build(options_from_args(ns))
    return 0
