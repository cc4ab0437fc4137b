"""``hpccont sign``, ``hpccont verify`` and ``hpccont key newpair``: SIF signatures.

Signatures are written and checked as the SIF reference implementation and Apptainer do
(image/sign.py), so images signed here verify with ``apptainer verify --key`` and the other way
round.
"""
import argparse
import json
import os
import sys

from ..errors import SignatureError, UsageError

class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line) instead of printing usage and exiting."""

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _verify_parser() -> _Parser:
    p = _Parser(prog="hpccont verify", description="Verify the signatures of a SIF image.")
    p.add_argument("--key", action="append", metavar="FILE",
                   help="trusted public key (PEM or armored PGP); default: the site keyring")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--legacy-insecure", action="store_true",
                   help="also check legacy signatures (Singularity < 3.6), which protect object "
                        "data only, not descriptors or the header")
    p.add_argument("image", metavar="IMAGE")
    return p


def cmd_verify(argv: list) -> int:
    from ..image.sign import check_signatures
    ns = _verify_parser().parse_args(argv)
    try:
        results = check_signatures(ns.image, ns.key, ns.legacy_insecure)
    except SignatureError as e:
        if not ns.json:
            raise
        sys.stdout.write(json.dumps({"image": ns.image, "verified": False,
                                     "error": e.one_line(), "signatures": []}, indent=1) + "\n")
        return e.exit_code
    failed = [r for _, r in results if isinstance(r, SignatureError)]
    if ns.json:
        sigs = [r.to_dict() if not isinstance(r, SignatureError)
                else {"signature": sid, "error": r.one_line()} for sid, r in results]
        sys.stdout.write(json.dumps({"image": ns.image, "verified": not failed,
                                     "signatures": sigs}, indent=1) + "\n")
    else:
        for sid, r in results:
            if isinstance(r, SignatureError):
                continue
            sys.stdout.write(f"signature {sid} ({r.kind}): verified objects "
                             f"{', '.join(map(str, r.objects))} of group {r.group}, signed by "
                             f"{'; '.join(r.signers)}\n")
        for e in failed:
            sys.stderr.write(f"hpccont verify: {e.one_line()}\n")
    return SignatureError.exit_code if failed else 0


def cmd_sign(argv: list) -> int:
    from ..image.sign import sign_image
    p = _Parser(prog="hpccont sign", description="Add a DSSE signature to a SIF image.")
    p.add_argument("--key", required=True, metavar="PRIVATE.pem",
                   help="PEM private key (Ed25519, RSA or ECDSA, unencrypted)")
    p.add_argument("--group", type=int, default=1, metavar="N", help="object group to sign")
    p.add_argument("image", metavar="IMAGE")
    ns = p.parse_args(argv)
    if not os.path.isfile(ns.image):
        raise SignatureError(f"image not found: {ns.image}")
    v = sign_image(ns.image, ns.key, ns.group)
    sys.stdout.write(f"signature {v.signature_id} added: objects {', '.join(map(str, v.objects))} "
                     f"of group {v.group}, key {'; '.join(v.signers)}\n")
    return 0


def cmd_key(argv: list) -> int:
    from ..image.sign import new_keypair
    p = _Parser(prog="hpccont key", description="Manage signing keys.")
    p.add_argument("action", choices=["newpair"])
    p.add_argument("--out", required=True, metavar="PREFIX",
                   help="writes PREFIX.pem (private, mode 0600) and PREFIX.pub.pem")
    ns = p.parse_args(argv)
    priv, pub = new_keypair(ns.out)
    sys.stdout.write(f"private key: {priv}\npublic key: {pub}\n")
    return 0


COMMANDS = {"verify": cmd_verify, "sign": cmd_sign, "key": cmd_key}


def main(name: str, argv: list) -> int:
    return COMMANDS[name](argv)
