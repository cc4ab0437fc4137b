"""``hpccont inspect [options] IMAGE``: an image's labels, definition file, scripts, environment.

Works on SIF files, plain squashfs files and sandbox directories, without mounting anything.
Output follows ``apptainer inspect``: labels as ``key: value`` lines by default, the raw text of
each asked-for script, ``=== path ===`` headed environment files, and with ``--json`` the
document ``{"data": {"attributes": {...}}, "type": "container"}``.
"""
import argparse
import json
import sys
from typing import List

from ..errors import UsageError
from ..image.layout import Metadata, image_metadata
from ..image.source import open_image

# option -> Metadata field, in the order sections are printed
SECTIONS = (("labels", "labels"), ("deffile", "deffile"), ("runscript", "runscript"),
            ("startscript", "startscript"), ("test", "test"), ("helpfile", "helpfile"),
            ("environment", "environment"))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{message} (see 'hpccont inspect --help')")


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hpccont inspect", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("-l", "--labels", action="store_true", help="labels (the default)")
    p.add_argument("-d", "--deffile", action="store_true", help="definition file used to build")
    p.add_argument("-r", "--runscript", action="store_true", help="runscript")
    p.add_argument("-s", "--startscript", action="store_true", help="instance startscript")
    p.add_argument("-t", "--test", action="store_true", help="test script")
    p.add_argument("-H", "--helpfile", action="store_true", help="runscript help text")
    p.add_argument("-e", "--environment", action="store_true", help="environment scripts")
    p.add_argument("-j", "--json", action="store_true", help="JSON output")
    p.add_argument("--all", action="store_true", help="everything above")
    return p


def selected(ns: argparse.Namespace) -> List[str]:
    chosen = [opt for opt, _ in SECTIONS if ns.all or getattr(ns, opt)]
    return chosen or ["labels"]


def as_json(meta: Metadata, chosen: List[str]) -> str:
    attrs = meta.attributes()
    picked = {k: attrs[k] for k in chosen if k in attrs}
    if "labels" in chosen:
        picked["labels"] = meta.labels
    return json.dumps({"data": {"attributes": picked}, "type": "container"}, indent=4) + "\n"


def as_text(meta: Metadata, chosen: List[str]) -> str:
    out = []
    for opt, field in SECTIONS:
        if opt not in chosen:
            continue
        value = getattr(meta, field)
        if opt == "labels":
            out += [f"{k}: {v}\n" for k, v in sorted(value.items())]
        elif opt == "environment":
            for path, content in (value or {}).items():
                out.append(f"=== {path} ===\n{content}")
                if not content.endswith("\n"):
                    out.append("\n")
                out.append("\n")
        elif value:
            out.append(value if value.endswith("\n") else value + "\n")
    return "".join(out)


def main(name: str, argv: list) -> int:
    ns = make_parser().parse_args(argv)
    meta = image_metadata(open_image(ns.image))
    chosen = selected(ns)
    sys.stdout.write(as_json(meta, chosen) if ns.json else as_text(meta, chosen))
    return 0
