"""``hpccont overlay create [--size MiB] [--sparse] [--create-dir DIR]... FILE|IMG.sif``."""
from __future__ import annotations

import argparse

from ..errors import UsageError


def main(name: str, argv: list) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: hpccont overlay create [--size MiB] [--sparse] [--create-dir DIR] "
              "FILE|IMAGE.sif")
        return 0 if argv else 2
    if argv[0] != "create":
        raise UsageError(f"unknown overlay command {argv[0]!r} (create)")
    p = argparse.ArgumentParser(prog="hpccont overlay create", add_help=True)
    p.add_argument("-s", "--size", type=int, default=64, help="size in MiB (at least 64)")
    p.add_argument("-S", "--sparse", action="store_true", help="a sparse file")
    p.add_argument("--create-dir", action="append", default=[],
                   help="a directory to create in the overlay (e.g. one the container writes)")
    p.add_argument("--fakeroot", "-f", action="store_true",
                   help="accepted: the overlay is the caller's either way")
    p.add_argument("image")
    try:
        args = p.parse_args(argv[1:])
    except SystemExit as e:
        if e.code == 0:
            return 0
        raise UsageError("usage: hpccont overlay create [--size MiB] [--sparse] "
                         "[--create-dir DIR] FILE|IMAGE.sif") from None
    from ..image.overlay import create
    create(args.image, args.size, args.sparse, tuple(args.create_dir))
    return 0
