"""``hpccont sif list|info|dump|header``: SIF objects, printed as ``apptainer sif`` prints them.

The text layouts (column widths, "NONE", "(G)" for group links, "*System" for the primary
partition, sizes as "27 KiB", times as Go prints UTC times) match the reference tools so that
scripts written against ``apptainer sif list`` parse hpccont's output too.  ``--json`` gives the
same data as the conformance files' ``expected.json``.
"""
import argparse
import json
import sys
from datetime import datetime, timezone

from ..errors import UsageError
from ..image import sif

USAGE = """usage: hpccont sif COMMAND ...

  list IMAGE [--json]        list the data objects of a SIF file
  info IMAGE ID              details of one data object (also: info ID IMAGE)
  dump IMAGE ID              write one data object's bytes to stdout (also: dump ID IMAGE)
  header IMAGE [--json]      the global header
"""

RULE = "-" * 78


def readable_size(size: int) -> str:
    """Bytes as the reference tools print them: "707 B", "27 KiB" (rounded half away from 0)."""
    if -1024 < size < 1024:
        return f"{size} B"
    div, exp = 1024, 0
    n = size // 1024
    while n <= -1024 or n >= 1024:
        div *= 1024
        exp += 1
        n //= 1024
    value = size / div
    rounded = int(abs(value) + 0.5) * (1 if value >= 0 else -1)
    return f"{rounded} {'KMGTPE'[exp]}iB"


def go_time(ts: int) -> str:
    try:
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")
    except (ValueError, OverflowError, OSError):
        # a time a damaged or hostile header holds, outside the calendar Python can print
        return f"{ts} seconds from 1970 (out of range)"


def aligned(rows: list, padding: int) -> str:
    """Rows of cells; every cell but the last of a row is padded to its column's width."""
    widths: dict = {}
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths.get(i, 0), len(cell) + padding)
    return "".join("".join(c.ljust(widths[i]) for i, c in enumerate(row[:-1])) + row[-1] + "\n"
                   for row in rows)


def header_text(h: sif.Header) -> str:
    rows = []
    if h.launch_script:
        rows.append(["Launch Script:", h.launch_script.rstrip("\n")])
    rows.append(["Version:", h.version])
    if h.arch != "unknown":
        rows.append(["Primary Architecture:", h.arch])
    if h.id != b"\x00" * 16:
        rows.append(["ID:", h.uuid])
    if h.created_at != sif.ZERO_TIME:
        rows.append(["Created At:", go_time(h.created_at)])
    if h.modified_at != sif.ZERO_TIME:
        rows.append(["Modified At:", go_time(h.modified_at)])
    rows += [["Descriptors Free:", str(h.descriptors_free)],
             ["Descriptors Total:", str(h.descriptors_total)],
             ["Descriptors Offset:", str(h.descriptors_offset)],
             ["Descriptors Size:", readable_size(h.descriptors_size)],
             ["Data Offset:", str(h.data_offset)],
             ["Data Size:", readable_size(h.data_size)]]
    return aligned(rows, 1)


def _group(d: sif.Descriptor) -> str:
    return "NONE" if d.group_id == 0 else str(d.group_id)


def _type_detail(d: sif.Descriptor) -> str:
    """What `sif list` shows in parentheses after the type, by data type."""
    if d.data_type == sif.DATA_PARTITION:
        part = sif.PART_TYPES.get(d.part_type, ("Unknown", "Unknown"))[1]
        return f" ({sif.FS_TYPES.get(d.fs_type, 'Unknown')}/{part}/{d.part_arch})"
    if d.data_type == sif.DATA_SIGNATURE:
        return f" ({sif.HASH_TYPES.get(d.hash_type, 'Unknown')})"
    if d.data_type == sif.DATA_CRYPTO_MESSAGE:
        return (f" ({sif.CRYPTO_FORMATS.get(d.crypto_format, 'Unknown')}/"
                f"{sif.CRYPTO_MESSAGES.get(d.crypto_message, 'Unknown')})")
    if d.data_type == sif.DATA_SBOM:
        return f" ({sif.SBOM_FORMATS.get(d.sbom_format, 'unknown')})"
    return ""


def list_text(image: sif.SifImage) -> str:
    out = [RULE, f"{'ID':<4} {'|GROUP':<8} {'|LINK':<8} {'|SIF POSITION (start-end)':<26} |TYPE", RULE]
    for d in image.descriptors:
        if d.linked_id == 0:
            link = f"|{'NONE':<7} "
        elif d.linked_to_group:
            link = f"|{d.linked_id:<3} (G) "
        else:
            link = f"|{d.linked_id:<7} "
        position = f"|{d.offset}-{d.offset + d.size} "
        out.append(f"{d.id:<4} |{_group(d):<7} {link}{position:<26} |{d.type_label}{_type_detail(d)}")
    return "\n".join(out) + "\n"


def _info_extras(d: sif.Descriptor) -> list:
    if d.data_type == sif.DATA_PARTITION:
        return [["Filesystem Type:", sif.FS_TYPES.get(d.fs_type, "Unknown")],
                ["Partition Type:", sif.PART_TYPES.get(d.part_type, ("Unknown", "Unknown"))[1]],
                ["Architecture:", d.part_arch]]
    if d.data_type == sif.DATA_SIGNATURE:
        rows = [["Hash Type:", sif.HASH_TYPES.get(d.hash_type, "Unknown")]]
        if d.entity_fingerprint:
            rows.append(["Entity:", d.entity_fingerprint.upper()])
        return rows
    if d.data_type == sif.DATA_CRYPTO_MESSAGE:
        return [["Format Type:", sif.CRYPTO_FORMATS.get(d.crypto_format, "Unknown")],
                ["Message Type:", sif.CRYPTO_MESSAGES.get(d.crypto_message, "Unknown")]]
    if d.data_type == sif.DATA_SBOM:
        return [["Format:", sif.SBOM_FORMATS.get(d.sbom_format, "unknown")]]
    if d.data_type in (sif.DATA_OCI_BLOB, sif.DATA_OCI_ROOT_INDEX):
        return [["Digest:", d.oci_digest]]
    return []


def info_text(d: sif.Descriptor) -> str:
    if d.linked_id == 0:
        link = "NONE"
    else:
        link = f"{d.linked_id} (G)" if d.linked_to_group else str(d.linked_id)
    rows = [["Data Type:", d.type_label], ["ID:", str(d.id)], ["Group ID:", _group(d)],
            ["Linked ID:", link], ["Offset:", str(d.offset)], ["Size:", str(d.size)]]
    if d.created_at != sif.ZERO_TIME:
        rows.append(["Created At:", go_time(d.created_at)])
    if d.modified_at != sif.ZERO_TIME:
        rows.append(["Modified At:", go_time(d.modified_at)])
    if d.name:
        rows.append(["Name:", d.name])
    rows += _info_extras(d)
    return aligned([[""] + r for r in rows], 2)


def _image_and_id(args: list, what: str) -> tuple:
    """(image, id) from ``IMAGE ID`` or Apptainer's order ``ID IMAGE``."""
    if len(args) != 2:
        raise UsageError(f"usage: hpccont sif {what} IMAGE ID")
    first, second = args
    if first.isdigit() and not second.isdigit():
        first, second = second, first
    if not second.isdigit():
        raise UsageError(f"object id must be a number, not {second!r}")
    return first, int(second)


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line) instead of printing usage and exiting."""

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _parse(cmd: str, argv: list, nargs) -> argparse.Namespace:
    p = _Parser(prog=f"hpccont sif {cmd}")
    p.add_argument("args", nargs=nargs, metavar="IMAGE" if nargs == 1 else "IMAGE ID")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p.parse_args(argv)


def cmd_list(argv: list) -> int:
    ns = _parse("list", argv, 1)
    image = sif.read_sif(ns.args[0])
    if ns.json:
        sys.stdout.write(json.dumps(image.to_dict(), indent=1) + "\n")
    else:
        sys.stdout.write(list_text(image))
    return 0


def cmd_header(argv: list) -> int:
    ns = _parse("header", argv, 1)
    image = sif.read_sif(ns.args[0])
    if ns.json:
        sys.stdout.write(json.dumps(image.header.to_dict(), indent=1) + "\n")
    else:
        sys.stdout.write(header_text(image.header))
    return 0


def cmd_info(argv: list) -> int:
    ns = _parse("info", argv, "+")
    path, object_id = _image_and_id(ns.args, "info")
    d = sif.read_sif(path).get(object_id)
    if ns.json:
        sys.stdout.write(json.dumps(d.to_dict(), indent=1) + "\n")
    else:
        sys.stdout.write(info_text(d))
    return 0


def cmd_dump(argv: list) -> int:
    ns = _parse("dump", argv, "+")
    path, object_id = _image_and_id(ns.args, "dump")
    image = sif.read_sif(path)
    d = image.get(object_id)
    out = sys.stdout.buffer
    for chunk in image.iter_object(d):
        out.write(chunk)
    out.flush()
    return 0


SUBCOMMANDS = {"list": cmd_list, "info": cmd_info, "dump": cmd_dump, "header": cmd_header}


def main(name: str, argv: list) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    handler = SUBCOMMANDS.get(argv[0])
    if handler is None:
        raise UsageError(f"unknown 'sif' command {argv[0]!r} (list, info, dump, header)")
    return handler(argv[1:])
