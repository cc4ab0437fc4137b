"""``hpccont cache list|clean``: the image cache ($HPCCONT_CACHEDIR, default ~/.cache/hpccont).

    hpccont cache list [--blobs]          converted SIFs (and blobs) with sizes and last use
    hpccont cache clean [--days N] [--type sif|blob|all] [-f]
                                          remove entries unused for N days (default: all)
"""
import argparse
import time
from typing import List

from ..errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{message} (see 'hpccont cache --help')")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def main(name: str, argv: List[str]) -> int:
    p = _Parser(prog="hpccont cache", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    ls = sub.add_parser("list", help="what the cache holds")
    ls.add_argument("--blobs", action="store_true", help="list every blob too")
    cl = sub.add_parser("clean", help="remove cached images and blobs")
    cl.add_argument("--days", type=float, default=None, metavar="N",
                    help="only entries not used for N days")
    cl.add_argument("--type", choices=("sif", "blob", "all"), default="all")
    cl.add_argument("-f", "--force", action="store_true", help="(accepted; clean never asks)")
    cl.add_argument("-n", "--dry-run", action="store_true", help="list what would go")
    for sp in (p, ls, cl):
        sp.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    from ..image.registry.pull import open_cache
    cache = open_cache()
    if ns.action == "list":
        entries = cache.entries()
        sifs = [e for e in entries if e["kind"] == "sif"]
        blobs = [e for e in entries if e["kind"] == "blob"]
        print(f"cache {cache.root}")
        for e in sifs:
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["used"]))
            print(f"sif   {_size(e['size']):>10}  {used}  {e['ref']}  {e['digest']}")
        if ns.blobs:
            for e in blobs:
                used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["used"]))
                print(f"blob  {_size(e['size']):>10}  {used}  {e['digest']}")
        print(f"{len(sifs)} images, {_size(sum(e['size'] for e in sifs))}; {len(blobs)} blobs, "
              f"{_size(sum(e['size'] for e in blobs))}")
        return 0
    if ns.days is not None and ns.days < 0:
        raise UsageError("--days must be >= 0")
    kinds = ("sif", "blob") if ns.type == "all" else (ns.type,)
    if ns.dry_run:
        cutoff = time.time() - ns.days * 86400 if ns.days is not None else None
        gone = [e for e in cache.entries() if e["kind"] in kinds
                and (cutoff is None or e["used"] <= cutoff)]
    else:
        gone = cache.clean(ns.days, kinds)
    print(f"{'would remove' if ns.dry_run else 'removed'} {len(gone)} entries, "
          f"{_size(sum(e['size'] for e in gone))}")
    return 0
