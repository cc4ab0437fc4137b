"""``hpccont config show|check``: what the site configuration says."""
import argparse
import json
import os
import sys
from typing import List

from .. import config


def main(name: str, argv: List[str]) -> int:
    p = argparse.ArgumentParser(prog="hpccont config", description="site configuration")
    sub = p.add_subparsers(dest="cmd", required=True)
    show = sub.add_parser("show", help="print the effective configuration")
    show.add_argument("--json", action="store_true", help="JSON instead of YAML")
    check = sub.add_parser("check", help="validate a configuration file")
    check.add_argument("file")
    args = p.parse_args(argv)
    if args.cmd == "check":
        config.parse_file(args.file)
        print(f"{args.file}: ok")
        return 0
    cfg = config.load(use_cache=False)
    path = config.config_path()
    source = path if os.path.exists(path) else "built-in defaults"
    if args.json:
        json.dump(cfg, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    import yaml
    sys.stdout.write(f"# effective configuration (from {source})\n")
    sys.stdout.write(yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False))
    return 0
