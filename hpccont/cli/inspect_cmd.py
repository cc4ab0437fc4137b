"""``hpccont inspect [options] IMAGE``: an image's labels, definition file, scripts, environment.

Works on SIF files, plain squashfs files and sandbox directories, without mounting anything.
Output follows ``apptainer inspect``: labels as ``key: value`` lines by default, the raw text of
each asked-for script, ``=== path ===`` headed environment files, and with ``--json`` the
document ``{"data": {"attributes": {...}}, "type": "container"}``.
"""
import argparse
import sys
from typing import List

from ..errors import UsageError
from ..image.layout import Metadata, image_metadata
from ..image.source import open_image

# option -> Metadata field; text output prints them in Apptainer's order (labels last)
SECTIONS = (("deffile", "deffile"), ("runscript", "runscript"), ("startscript", "startscript"),
            ("test", "test"), ("helpfile", "helpfile"), ("environment", "environment"),
            ("labels", "labels"))
APP_FIELDS = ("runscript", "startscript", "test", "helpfile", "environment", "labels")


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
    p.add_argument("--list-apps", action="store_true", help="the image's SCIF apps")
    p.add_argument("--app", metavar="NAME", default="", help="inspect one SCIF app")
    p.add_argument("--all", action="store_true", help="everything above (as JSON)")
    return p


def selected(ns: argparse.Namespace) -> List[str]:
    chosen = [opt for opt, _ in SECTIONS if ns.all or getattr(ns, opt)]
    if ns.all or ns.labels or not (chosen or ns.list_apps):
        chosen.append("labels")
    return list(dict.fromkeys(chosen))


def _picked(meta: Metadata, chosen: List[str], ns: argparse.Namespace) -> Metadata:
    """The asked-for fields only (Apptainer fills a fresh metadata object with them); apps are
    kept for --list-apps and --all, or only the one of --app."""
    out = Metadata(labels={})
    app = "" if ns.all else ns.app
    for field in chosen:
        if app:
            continue
        setattr(out, field, getattr(meta, field) if field != "labels" else meta.labels)
    apps = meta.apps or {}
    if ns.all or ns.list_apps:
        out.apps = dict(apps)
    elif app and app in apps:
        out.apps = {app: {k: v for k, v in apps[app].items() if k in chosen}}
    return out


def as_json(meta: Metadata, chosen: List[str], ns=None) -> str:
    ns = ns or argparse.Namespace(all=False, app="", list_apps=False)
    return _picked(meta, chosen, ns).to_json()


def as_text(meta: Metadata, chosen: List[str], ns=None) -> str:
    """``apptainer inspect``'s text: deffile, runscript, startscript, test, help, environment
    files (``=== path ===``), then labels as ``key: value`` lines, each sorted."""
    ns = ns or argparse.Namespace(all=False, app="", list_apps=False)
    picked = _picked(meta, chosen, ns)
    app = (picked.apps or {}).get(ns.app) or {}
    out = []
    if ns.list_apps:
        out += [f"{name}\n" for name in sorted(picked.apps or {})]
    for opt, field in SECTIONS:
        value = getattr(picked, field) or app.get(field)
        if not value:
            continue
        if opt == "labels":
            out += [f"{k}: {v}\n" for k, v in sorted(value.items())]
        elif opt == "environment":
            out += [f"=== {path} ===\n{value[path]}\n\n" for path in sorted(value)]
        else:
            out.append(value + "\n")
    return "".join(out)


def main(name: str, argv: list) -> int:
    ns = make_parser().parse_args(argv)
    meta = image_metadata(open_image(ns.image))
    chosen = selected(ns)
    if ns.app and ns.app not in (meta.apps or {}) and not ns.all:
        sys.stderr.write(f"hpccont inspect: warning: no app {ns.app!r} in {ns.image}\n")
    use_json = ns.json or ns.all
    sys.stdout.write(as_json(meta, chosen, ns) if use_json else as_text(meta, chosen, ns))
    return 0
