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
                   help="trusted public key (PEM or OpenPGP); default: the site keyring and "
                        "your local keyring (hpccont key list; as root only with HPCCONT_KEYS)")
    p.add_argument("-j", "--json", action="store_true", help="machine-readable output")
    p.add_argument("-g", "--group-id", type=int, metavar="N",
                   help="verify only the signatures of object group N")
    p.add_argument("-i", "--sif-id", type=int, metavar="N",
                   help="verify only the signatures covering object N")
    p.add_argument("-a", "--all", action="store_true",
                   help="also require every object of the image to be covered by a signature")
    p.add_argument("--legacy-insecure", action="store_true",
                   help="also check legacy signatures (Singularity < 3.6), which protect object "
                        "data only, not descriptors or the header")
    p.add_argument("image", metavar="IMAGE")
    return p


def _default_keys(tmpdir: str) -> tuple:
    """(key files, {fingerprint or key id: "LOCAL"|"GLOBAL"}) when --key is not given."""
    from ..image import keyring
    from ..image.sign import site_keyring
    site = site_keyring()
    where = {}
    for path in site:
        where.update({k: "GLOBAL" for k in _key_ids(path)})
    # Root's checks for the batch system run with a fixed environment and must trust the site
    # keyring only: root's own keyring counts only when named with HPCCONT_KEYS.
    use_local = os.geteuid() != 0 or bool(os.environ.get("HPCCONT_KEYS"))
    local = keyring.local_verification_keys(tmpdir) if use_local else []
    for path in local:
        where.update({k: "LOCAL" for k in _key_ids(path) if k not in where})
    return site + local, where


def _key_ids(path: str) -> list:
    """Fingerprints (PGP) or key ids (PEM) in a key file, for the [LOCAL]/[GLOBAL] prefix."""
    from ..image import dsse, keyring, pgp
    try:
        if pgp.is_pgp_key_file(path):
            import tempfile
            with tempfile.TemporaryDirectory(prefix="hpccont-gpg-") as home:
                os.chmod(home, 0o700)
                r = keyring.gpg(["--with-colons", "--import-options", "show-only", "--import",
                                 path], home=home, check=False)
            return [k.fingerprint for k in keyring._parse_colons(r.stdout.decode(), False)]
        return [dsse.load_pem(path).keyid]
    except (SignatureError, OSError):
        return []


def _object_rows(image_path: str, ids: list) -> list:
    from ..image import sif
    image = sif.read_sif(image_path)
    rows = []
    for i in ids:
        d = image.get(i)
        group = str(d.group_id) if d.raw_group != sif.GROUP_MASK and d.group_id else "NONE"
        link = "NONE"
        if d.linked_id:
            link = f"{d.linked_id} (G)" if d.linked_to_group else str(d.linked_id)
        rows.append((d.id, group, link, d.type_label))
    return rows


def cmd_verify(argv: list) -> int:
    import tempfile
    from ..image.sign import check_signatures, unsigned_objects
    ns = _verify_parser().parse_args(argv)
    if ns.group_id is not None and ns.sif_id is not None:
        raise UsageError("--group-id and --sif-id exclude each other")
    with tempfile.TemporaryDirectory(prefix="hpccont-verify-") as tmp:
        keys, where = (list(ns.key), {k: "LOCAL" for f in ns.key for k in _key_ids(f)}) \
            if ns.key else _default_keys(tmp)
        try:
            results = check_signatures(ns.image, keys, ns.legacy_insecure, ns.group_id,
                                       ns.sif_id)
        except SignatureError as e:
            if not ns.json:
                raise
            sys.stdout.write(json.dumps({"Signatures": 0, "SignerKeys": [], "image": ns.image,
                                         "verified": False, "error": e.one_line(),
                                         "signatures": []}, indent=1) + "\n")
            return e.exit_code
    failed = [r for _, r in results if isinstance(r, SignatureError)]
    if ns.all:
        missing = unsigned_objects(ns.image, results)
        if missing:
            failed.append(SignatureError(f"{ns.image}: object(s) {', '.join(map(str, missing))} "
                                         "not covered by a verified signature (--all)"))
    if ns.json:
        sys.stdout.write(json.dumps(_json_report(ns.image, results, failed, where),
                                    indent=1) + "\n")
    else:
        for sid, r in results:
            if isinstance(r, SignatureError):
                continue
            sys.stdout.write(f"signature {sid} ({r.kind}): verified objects "
                             f"{', '.join(map(str, r.objects))} of group {r.group}, signed by "
                             f"{'; '.join(r.signers)}\n")
            if r.fingerprint:       # as apptainer verify shows the signer
                prefix = f"[{where.get(r.fingerprint, 'LOCAL')}]"
                sys.stdout.write(f"{prefix:<10}Signing entity: {r.entity}\n"
                                 f"{prefix:<10}Fingerprint: {r.fingerprint}\n")
            sys.stdout.write("Objects verified:\n" + f"{'ID':<4}|{'GROUP':<8}|{'LINK':<8}|TYPE\n"
                             + "-" * 48 + "\n")
            for row in _object_rows(ns.image, r.objects):
                sys.stdout.write(f"{row[0]:<4}|{row[1]:<8}|{row[2]:<8}|{row[3]}\n")
        for e in failed:
            sys.stderr.write(f"hpccont verify: {e.one_line()}\n")
        if not failed:
            sys.stdout.write(f"Container verified: {ns.image}\n")
    return SignatureError.exit_code if failed else 0


def _json_report(image: str, results: list, failed: list, where: dict) -> dict:
    """Apptainer's ``verify --json`` fields (Signatures, SignerKeys), then hpccont's own."""
    signer_keys = []
    for _, r in results:
        if isinstance(r, SignatureError):
            continue
        for row in _object_rows(image, r.objects):
            signer_keys.append({"Signer": {
                "Partition": row[3], "Name": r.entity or "unknown",
                "Fingerprint": r.fingerprint.lower(),
                "KeyLocal": where.get(r.fingerprint) == "LOCAL" if r.fingerprint else False,
                "KeyCheck": bool(r.fingerprint), "DataCheck": True}})
    sigs = [r.to_dict() if not isinstance(r, SignatureError)
            else {"signature": sid, "error": r.one_line()} for sid, r in results]
    out = {"Signatures": len(results), "SignerKeys": signer_keys, "image": image,
           "verified": not failed, "signatures": sigs}
    if failed:
        out["errors"] = [e.one_line() for e in failed]
    return out


def cmd_sign(argv: list) -> int:
    from ..image import keyring
    from ..image.sign import sign_image
    p = _Parser(prog="hpccont sign", description="Add a signature to a SIF image: DSSE with a "
                "PEM private key (--key), else OpenPGP with a key of your local keyring.")
    p.add_argument("--key", metavar="PRIVATE.pem",
                   help="PEM private key (Ed25519, RSA or ECDSA, unencrypted)")
    p.add_argument("-k", "--keyidx", metavar="N", default=None,
                   help="OpenPGP secret key of the local keyring: index from 'key list "
                        "--secret' or fingerprint (default: the only one)")
    p.add_argument("-g", "--group-id", "--group", type=int, default=None, metavar="N",
                   dest="group", help="object group to sign (default 1)")
    p.add_argument("-i", "--sif-id", type=int, default=None, metavar="N",
                   help="sign object N only")
    p.add_argument("image", metavar="IMAGE")
    ns = p.parse_args(argv)
    if not os.path.isfile(ns.image):
        raise SignatureError(f"image not found: {ns.image}")
    if ns.group is not None and ns.sif_id is not None:
        raise UsageError("--group-id and --sif-id exclude each other")
    if ns.key and ns.keyidx is not None:
        raise UsageError("--key and --keyidx exclude each other")
    fpr = None
    if not ns.key:
        secret = keyring.pgp_keys(secret=True)
        if ns.keyidx is None and len(secret) != 1:
            raise SignatureError("give --key PRIVATE.pem, or --keyidx N for one of the "
                                 f"{len(secret)} OpenPGP secret keys of your keyring"
                                 if secret else "no signing key: give --key PRIVATE.pem or "
                                 "make one with 'hpccont key newpair --name N --email E'")
        fpr = keyring.find_pgp(ns.keyidx or "0", secret=True).fingerprint
    v = sign_image(ns.image, ns.key, ns.group or 1, pgp_fingerprint=fpr, object_id=ns.sif_id)
    sys.stdout.write(f"signature {v.signature_id} added: objects {', '.join(map(str, v.objects))} "
                     f"of group {v.group}, key {'; '.join(v.signers)}\n")
    return 0


KEY_ACTIONS = ("newpair", "list", "import", "export", "remove")


def cmd_key(argv: list) -> int:
    from ..image import keyring
    from ..image.sign import new_keypair
    p = _Parser(prog="hpccont key", description="Manage signing keys: PEM files, and a local "
                f"keyring of OpenPGP and PEM keys ({keyring.keys_dir()}).")
    p.add_argument("action", choices=KEY_ACTIONS)
    p.add_argument("target", nargs="*", metavar="ARG",
                   help="import: FILE; export: KEY FILE; remove: KEY (index or fingerprint)")
    p.add_argument("--out", metavar="PREFIX",
                   help="newpair: write PREFIX.pem (private, mode 0600) and PREFIX.pub.pem "
                        "instead of adding an OpenPGP key to the keyring")
    p.add_argument("--name", help="newpair: the OpenPGP key's user name")
    p.add_argument("--email", help="newpair: the OpenPGP key's e-mail address")
    p.add_argument("--comment", default="", help="newpair: a comment in the user id")
    p.add_argument("--bits", type=int, default=0, help="newpair: RSA key of this size "
                   "(default: Ed25519)")
    p.add_argument("--pem", action="store_true", help="newpair: a PEM pair into the keyring")
    p.add_argument("-s", "--secret", action="store_true",
                   help="list/export: secret keys")
    p.add_argument("--binary", action="store_true", help="export: binary OpenPGP, not armor")
    p.add_argument("-j", "--json", action="store_true", help="list: machine-readable")
    ns = p.parse_intermixed_args(argv)
    want = {"newpair": 0, "list": 0, "import": 1, "export": 2, "remove": 1}[ns.action]
    if len(ns.target) != want:
        raise UsageError(f"key {ns.action} takes {want} argument(s)")
    out = sys.stdout.write
    if ns.action == "newpair":
        if ns.out:
            priv, pub = new_keypair(ns.out)
            out(f"private key: {priv}\npublic key: {pub}\n")
        elif ns.pem:
            import tempfile
            with tempfile.TemporaryDirectory() as tmp:
                priv, _ = new_keypair(os.path.join(tmp, "k"))
                with open(priv, "rb") as f:
                    e = keyring.store_pem(f.read())
            out(f"PEM key {e.algorithm} {e.keyid} added: {e.private}\n")
        else:
            k = keyring.new_pgp_key(ns.name or "", ns.email or "", ns.comment, ns.bits)
            out(f"OpenPGP key {k.fingerprint} added for {', '.join(k.uids)}\n")
    elif ns.action == "list":
        pgp = keyring.pgp_keys(secret=ns.secret)
        pem = [e for e in keyring.pem_keys() if e.private or not ns.secret] \
            if os.path.isdir(keyring.keys_dir()) else []
        if ns.json:
            out(json.dumps([k.to_dict() for k in pgp] + [e.to_dict() for e in pem],
                           indent=1) + "\n")
            return 0
        out(f"{'Private' if ns.secret else 'Public'} key listing ({keyring.keys_dir()}):\n\n")
        for i, k in enumerate(pgp):
            import time
            for uid in k.uids or ["(no user id)"]:
                out(f"{i}) U: {uid}\n")
            out(f"   C: {time.strftime('%Y-%m-%d %H:%M:%S %z', time.localtime(k.created))}\n"
                f"   F: {k.fingerprint}\n   L: {k.bits}\n   --------\n")
        for e in pem:
            out(f"PEM) T: {e.algorithm}\n   F: {e.keyid}\n"
                f"   P: {e.private or e.public}\n   --------\n")
    elif ns.action == "import":
        for d in keyring.import_key(ns.target[0]):
            out(f"imported {d.get('type')} key {d.get('fingerprint', '')} "
                f"{' '.join(d.get('uids', []))}{d.get('note', '')}\n".replace("  ", " "))
    elif ns.action == "export":
        d = keyring.export_key(ns.target[0], ns.target[1], secret=ns.secret,
                               armor=not ns.binary)
        out(f"exported {d['type']} key {d['fingerprint']} to {ns.target[1]}\n")
    else:
        d = keyring.remove_key(ns.target[0])
        out(f"removed {d['type']} key {d['fingerprint']}\n")
    return 0


COMMANDS = {"verify": cmd_verify, "sign": cmd_sign, "key": cmd_key}


def main(name: str, argv: list) -> int:
    return COMMANDS[name](argv)
