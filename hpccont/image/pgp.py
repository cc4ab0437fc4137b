"""OpenPGP clear-signed SIF signatures, checked with ``gpg`` (Debian package gnupg).

Each check runs gpg with a private, temporary GNUPGHOME holding only the keys given: the user's
own keyring and trust settings must not decide what a site trusts.  ``--trust-model always``
because trust here is "this key file is in the keyring", not the web of trust.  The signed text
comes back from gpg itself (``--decrypt`` of a clear-signed message prints the text it checked),
so the caller never parses the armor.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

from ..errors import SignatureError

CLEARSIGN_HEADER = b"-----BEGIN PGP SIGNED MESSAGE-----"
ARMORED_KEY = b"-----BEGIN PGP PUBLIC KEY BLOCK-----"


@dataclass
class PgpResult:
    fingerprint: str      # primary key fingerprint, upper-case hex
    uid: str
    text: bytes           # the signed text


def is_clearsigned(data: bytes) -> bool:
    return data.lstrip().startswith(CLEARSIGN_HEADER)


def clearsigned_text(data: bytes) -> bytes:
    """The signed text of a clear-signed message as it stands in the armor (not verified:
    only to tell what kind of signature it is before asking gpg)."""
    head, sep, rest = data.lstrip().partition(b"\n\n")
    if not sep:
        head, sep, rest = data.lstrip().replace(b"\r\n", b"\n").partition(b"\n\n")
    return rest.split(b"\n-----BEGIN PGP SIGNATURE-----", 1)[0]


def is_pgp_key_file(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return ARMORED_KEY in head or (bool(head) and head[0] & 0x80 != 0 and b"-----" not in head)


def _gpg() -> str:
    gpg = shutil.which("gpg")
    if not gpg:
        raise SignatureError("checking PGP signatures needs gpg (Debian package gnupg)")
    return gpg


def verify_clearsigned(data: bytes, key_files: list, where: str) -> PgpResult | None:
    """The signer and signed text when one of ``key_files`` made the signature, else None."""
    if not key_files:
        return None
    gpg = _gpg()
    home = tempfile.mkdtemp(prefix="hpccont-gpg-")
    try:
        base = [gpg, "--homedir", home, "--batch", "--no-tty", "--quiet", "--no-autostart",
                "--trust-model", "always"]
        r = subprocess.run(base + ["--import", *key_files], capture_output=True)
        if r.returncode not in (0, 2):
            raise SignatureError(f"cannot import PGP keys: {_last(r.stderr)}")
        r = subprocess.run(base + ["--status-fd", "2", "--output", "-", "--decrypt"],
                           input=data, capture_output=True)
        status = _status(r.stderr)
        if r.returncode != 0 or "VALIDSIG" not in status:
            if "BADSIG" in status:
                raise SignatureError(f"{where}: bad PGP signature")
            return None     # no matching key (NO_PUBKEY) or unreadable message
        fields = status["VALIDSIG"]
        uid = " ".join(status.get("GOODSIG", ["", ""])[1:])
        return PgpResult(fingerprint=fields[-1].upper(), uid=uid, text=r.stdout)
    finally:
        _kill_agent(gpg, home)
        shutil.rmtree(home, ignore_errors=True)


def _status(stderr: bytes) -> dict:
    out = {}
    for line in stderr.decode("utf-8", "replace").splitlines():
        if line.startswith("[GNUPG:] "):
            word, *rest = line[9:].split()
            out[word] = rest
    return out


def _last(stderr: bytes) -> str:
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else "gpg failed"


def _kill_agent(gpg: str, home: str) -> None:
    """An import may start gpg-agent for the temporary home; it must not outlive the check."""
    if os.path.exists(os.path.join(home, "S.gpg-agent")):
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], capture_output=True)
