"""The user's local keyring: OpenPGP keys (through ``gpg``) and PEM keys, for ``hpccont key``,
``sign`` and ``verify``.

Layout (``$HPCCONT_KEYS``, default ``$XDG_DATA_HOME/hpccont/keys`` or
``~/.local/share/hpccont/keys``; every directory mode 0700)::

    gnupg/                      a GNUPGHOME of its own: the user's ~/.gnupg is never touched
    pem/SHA256_<b64>.pub.pem    PEM public keys, named by their SSH-style fingerprint
    pem/SHA256_<b64>.pem        PEM private keys (0600), with their public half beside them

OpenPGP keys are made and used without passphrase prompts (``--batch``; a key imported with a
passphrase cannot sign here).  Every gpg run gets ``--batch --no-tty`` and the agent it may have
started is stopped afterwards.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

from ..errors import SignatureError


def keys_dir() -> str:
    d = os.environ.get("HPCCONT_KEYS")
    if d:
        return d
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "share")
    return os.path.join(data, "hpccont", "keys")


def _private_dir(path: str) -> str:
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as e:
        raise SignatureError(f"cannot use key directory {path}: {e.strerror}") from None
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise SignatureError(f"key directory {path} must be yours and private (mode 0700)")
    return path


def gnupg_home() -> str:
    _private_dir(keys_dir())
    return _private_dir(os.path.join(keys_dir(), "gnupg"))


def pem_dir() -> str:
    _private_dir(keys_dir())
    return _private_dir(os.path.join(keys_dir(), "pem"))


# ---------------------------------------------------------------- gpg
def _gpg_path() -> str:
    gpg = shutil.which("gpg") or ("/usr/bin/gpg" if os.path.exists("/usr/bin/gpg") else None)
    if not gpg:
        raise SignatureError("OpenPGP keys need gpg (Debian package gnupg)")
    return gpg


def gpg(args: list, *, home: str | None = None, input: bytes | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    home = home or gnupg_home()
    argv = [_gpg_path(), "--homedir", home, "--batch", "--no-tty", "--quiet",
            "--pinentry-mode=loopback", *args]
    try:
        r = subprocess.run(argv, input=input, capture_output=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise SignatureError("gpg did not answer within 300 s") from None
    finally:
        _stop_agent(home)
    if check and r.returncode != 0:
        lines = r.stderr.decode("utf-8", "replace").strip().splitlines()
        raise SignatureError(f"gpg: {lines[-1] if lines else 'failed'}")
    return r


def _stop_agent(home: str) -> None:
    if os.path.exists(os.path.join(home, "S.gpg-agent")) and shutil.which("gpgconf"):
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"],
                       capture_output=True)


@dataclass
class PgpKey:
    fingerprint: str              # primary key, upper-case hex
    uids: list = field(default_factory=list)
    created: int = 0
    bits: int = 0
    algo: str = ""
    secret: bool = False

    def to_dict(self) -> dict:
        return {"type": "pgp", "fingerprint": self.fingerprint, "uids": self.uids,
                "created": self.created, "bits": self.bits, "algorithm": self.algo,
                "secret": self.secret}


PGP_ALGOS = {"1": "RSA", "17": "DSA", "19": "ECDSA", "22": "EdDSA"}


def _parse_colons(text: str, secret: bool) -> list:
    keys, cur, want_fpr = [], None, False
    for line in text.splitlines():
        f = line.split(":")
        if f[0] in ("pub", "sec"):
            cur = PgpKey("", [], int(f[5] or 0), int(f[2] or 0), PGP_ALGOS.get(f[3], f[3]),
                         secret)
            keys.append(cur)
            want_fpr = True
        elif f[0] in ("sub", "ssb"):
            want_fpr = False
        elif f[0] == "fpr" and cur is not None and want_fpr:
            cur.fingerprint = f[9].upper()
            want_fpr = False
        elif f[0] == "uid" and cur is not None:
            cur.uids.append(_unescape_colons(f[9]))
    return keys


def _unescape_colons(s: str) -> str:
    import re
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), s)


def pgp_keys(secret: bool = False) -> list:
    """The keyring's OpenPGP keys (public ones, or those with a secret part), in gpg's order."""
    home = gnupg_home()
    r = gpg(["--with-colons", "--fixed-list-mode",
             "--list-secret-keys" if secret else "--list-keys"], home=home, check=False)
    return _parse_colons(r.stdout.decode("utf-8", "replace"), secret)


def new_pgp_key(name: str, email: str, comment: str = "", bits: int = 0) -> PgpKey:
    """An OpenPGP signing key without passphrase: Ed25519, or RSA of ``bits`` bits."""
    if not name.strip() or "@" not in email or any(c in name + email + comment for c in "<>()\n"):
        raise SignatureError("newpair needs --name and --email (no '<', '>', '(', ')' in them)")
    uid = name.strip() + (f" ({comment.strip()})" if comment.strip() else "") + f" <{email.strip()}>"
    algo = f"rsa{bits}" if bits else "ed25519"
    before = {k.fingerprint for k in pgp_keys(secret=True)}
    gpg(["--passphrase", "", "--quick-generate-key", uid, algo, "sign", "never"])
    made = [k for k in pgp_keys(secret=True) if k.fingerprint not in before]
    if not made:
        raise SignatureError("gpg made no key")
    return made[0]


def find_pgp(selector: str, secret: bool = False) -> PgpKey:
    """A key by index (``0``, ``1``... as ``key list`` shows them) or (a suffix of) its
    fingerprint."""
    keys = pgp_keys(secret)
    if selector.isdigit() and len(selector) < 8:
        i = int(selector)
        if i >= len(keys):
            raise SignatureError(f"no {'secret ' if secret else ''}OpenPGP key at index {i} "
                                 f"(the keyring has {len(keys)})")
        return keys[i]
    sel = selector.upper().replace(" ", "")
    found = [k for k in keys if k.fingerprint.endswith(sel)] if len(sel) >= 8 else []
    if len(found) != 1:
        raise SignatureError(f"no {'secret ' if secret else ''}OpenPGP key {selector!r} in the "
                             "keyring" if not found else f"{selector!r} names several keys")
    return found[0]


def export_pgp_public(path: str, fingerprints: list | None = None) -> bool:
    """Write the keyring's public keys (or the given ones) to ``path``; False when none."""
    keys = [k.fingerprint for k in pgp_keys()] if fingerprints is None else fingerprints
    if not keys:
        return False
    r = gpg(["--export", *keys])
    if not r.stdout:
        return False
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(r.stdout)
    return True


def clearsign(payload: bytes, fingerprint: str) -> bytes:
    r = gpg(["--local-user", fingerprint + "!", "--digest-algo", "SHA256", "--passphrase", "",
             "--clearsign"], input=payload)
    return r.stdout


# ---------------------------------------------------------------- PEM
@dataclass
class PemEntry:
    keyid: str                # SHA256:... (as DSSE envelopes name keys)
    algorithm: str
    public: str               # path
    private: str = ""         # path, when the keyring holds the private key

    def to_dict(self) -> dict:
        return {"type": "pem", "fingerprint": self.keyid, "algorithm": self.algorithm,
                "public": self.public, "private": self.private or None}


def _pem_name(keyid: str) -> str:
    return keyid.replace(":", "_").replace("/", "-").replace("+", ".")


def pem_keys() -> list:
    from . import dsse
    d = pem_dir()
    out = []
    for name in sorted(os.listdir(d)):
        if not name.endswith(".pub.pem"):
            continue
        path = os.path.join(d, name)
        try:
            key = dsse.load_pem(path)
        except SignatureError:
            continue
        priv = path[:-len(".pub.pem")] + ".pem"
        out.append(PemEntry(key.keyid, key.algorithm, path, priv if os.path.isfile(priv) else ""))
    return out


def find_pem(selector: str) -> PemEntry:
    found = [k for k in pem_keys() if selector in (k.keyid, k.keyid.split(":", 1)[-1])
             or k.keyid.endswith(selector)]
    if len(found) != 1:
        raise SignatureError(f"no PEM key {selector!r} in the keyring" if not found
                             else f"{selector!r} names several keys")
    return found[0]


def _write(path: str, data: bytes, mode: int) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def store_pem(data: bytes) -> PemEntry:
    """Add a PEM public or (unencrypted) private key; a private key brings its public half."""
    from cryptography.hazmat.primitives import serialization
    from . import dsse
    private = b"PRIVATE KEY" in data
    try:
        if private:
            key = serialization.load_pem_private_key(data, password=None)
            pub = key.public_key()
        else:
            pub = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise SignatureError(f"not a usable PEM key: {e}") from None
    pub_pem = pub.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo)
    d = pem_dir()
    tmp = os.path.join(d, f".check-{os.getpid()}.pub.pem")
    _write(tmp, pub_pem, 0o600)
    try:
        entry = dsse.load_pem(tmp)            # the algorithms SIF signatures use, or refused
    finally:
        os.unlink(tmp)
    base = os.path.join(d, _pem_name(entry.keyid))
    _write(base + ".pub.pem", pub_pem, 0o644)
    if private:
        _write(base + ".pem", data, 0o600)
    return PemEntry(entry.keyid, entry.algorithm, base + ".pub.pem",
                    base + ".pem" if private else "")


# ---------------------------------------------------------------- import / export / remove
def is_pgp(data: bytes) -> bool:
    return b"-----BEGIN PGP" in data[:4096] or (bool(data) and data[0] & 0x80 != 0
                                               and b"-----BEGIN" not in data[:4096])


def import_key(path: str) -> list:
    """Import a key file (PEM, or OpenPGP armored or binary); what was added."""
    try:
        with open(path, "rb") as f:
            data = f.read(16 << 20)
    except OSError as e:
        raise SignatureError(f"cannot read {path}: {e.strerror}") from None
    if is_pgp(data):
        before = {k.fingerprint for k in pgp_keys()}
        gpg(["--import"], input=data)
        new = [k for k in pgp_keys() if k.fingerprint not in before]
        return [k.to_dict() for k in new] or [{"type": "pgp", "note": "already in the keyring"}]
    if b"-----BEGIN" in data:
        return [store_pem(data).to_dict()]
    raise SignatureError(f"{path}: neither a PEM nor an OpenPGP key")


def export_key(selector: str, out: str, secret: bool = False, armor: bool = True) -> dict:
    """Write one key (public, or its private part with ``secret``) to ``out`` (new file)."""
    if os.path.lexists(out):
        raise SignatureError(f"{out} exists; not overwriting")
    try:
        k = find_pem(selector)
    except SignatureError:
        k = None
    if k is not None:
        src = k.private if secret else k.public
        if not src:
            raise SignatureError(f"the keyring holds no private key for {k.keyid}")
        with open(src, "rb") as f:
            _write(out, f.read(), 0o600 if secret else 0o644)
        return k.to_dict()
    p = find_pgp(selector, secret=secret)
    args = (["--export-secret-keys", "--passphrase", ""] if secret else ["--export"])
    r = gpg((["--armor"] if armor else []) + args + [p.fingerprint])
    _write(out, r.stdout, 0o600 if secret else 0o644)
    return p.to_dict()


def remove_key(selector: str) -> dict:
    try:
        k = find_pem(selector)
    except SignatureError:
        k = None
    if k is not None:
        for path in (k.public, k.private):
            if path:
                os.unlink(path)
        return k.to_dict()
    p = find_pgp(selector)
    if any(s.fingerprint == p.fingerprint for s in pgp_keys(secret=True)):
        gpg(["--yes", "--delete-secret-keys", p.fingerprint])
    gpg(["--yes", "--delete-keys", p.fingerprint])
    return p.to_dict()


def local_verification_keys(tmpdir: str) -> list:
    """Files holding the keyring's public keys, for verification: every PEM public key and one
    file with every OpenPGP public key (written into ``tmpdir``)."""
    if not os.path.isdir(keys_dir()):
        return []
    files = [k.public for k in pem_keys()]
    pgp_file = os.path.join(tmpdir, "local-pgp.gpg")
    if export_pgp_public(pgp_file):
        files.append(pgp_file)
    return files
