"""``image-info``: which image the loaded module runs, its digest, labels and commands."""
import json
import os
from typing import Mapping, Optional

from .metadata import discover_commands, read_metadata, sha256_file


def image_info(image: str, module: Optional[str], environ: Mapping[str, str]) -> dict:
    meta = read_metadata(image)
    central = environ.get("HPCCONT_IMAGE_CENTRAL") if environ.get("HPCCONT_MODULE") == module else None
    return {"module": module or "", "image": meta.path, "kind": meta.kind, "size": meta.size,
            "digest": sha256_file(meta.path), "signed": meta.signed,
            "central": central or "", "local_copy": bool(central) and
            os.path.abspath(central) != meta.path,
            "commands": [c.name for c in discover_commands(meta)],
            "labels": meta.labels, "help": meta.help}


def format_info(info: dict, as_json: bool) -> str:
    if as_json:
        return json.dumps(info, indent=2, sort_keys=True) + "\n"
    rows = [("module", info["module"] or "(none)"), ("image", f"{info['image']} ({info['kind']}, "
                                                            f"{info['size']} bytes)"),
            ("digest", info["digest"]), ("signed", "yes" if info["signed"] else "no")]
    if info["central"]:
        rows.append(("central", info["central"] + ("  (you run your own copy)"
                                                   if info["local_copy"] else "")))
    if info["commands"]:
        rows.append(("commands", " ".join(info["commands"])))
    out = "".join(f"{k + ':':<10}{v}\n" for k, v in rows)
    if info["labels"]:
        out += "labels:\n" + "".join(f"  {k}: {v}\n" for k, v in sorted(info["labels"].items()))
    return out
