"""DSSE envelopes and PEM keys, as SIF signatures use them.

A DSSE envelope is JSON ``{"payloadType", "payload" (base64), "signatures": [{"keyid", "sig"}]}``;
each signature is made over the pre-authentication encoding (PAE) of type and payload, never the
payload alone, so a signature cannot be replayed with another payload type.  SIF images carry the
type ``application/vnd.sylabs.sif-metadata+json``.

Key algorithms follow the reference signer's defaults: Ed25519 signs the PAE itself; RSA uses
PKCS#1 v1.5 and ECDSA an ASN.1 signature, both over SHA-256.  The ``keyid`` the reference writes
is the SSH-style fingerprint ``SHA256:<base64 of sha256(ssh wire key)>``: it is only a hint, a
verifier tries every trusted key.  ``cryptography`` is imported here only, and this module only
when signatures are signed or checked.
"""
from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

from ..errors import SignatureError

PAYLOAD_TYPE = "application/vnd.sylabs.sif-metadata+json"


@dataclass
class PemKey:
    """A public (and maybe private) key from a PEM file."""
    path: str
    public: object
    private: object = None

    @property
    def algorithm(self) -> str:
        return _algorithm(self.public)

    @property
    def keyid(self) -> str:
        return key_id(self.public)


@dataclass
class Envelope:
    payload_type: str
    payload: bytes
    signatures: list      # [(keyid, raw signature bytes)]


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSEv1 pre-authentication encoding: lengths are decimal byte counts."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def looks_like_envelope(data: bytes) -> bool:
    return data.lstrip().startswith(b"{") and b'"payloadType"' in data


def parse_envelope(data: bytes, where: str) -> Envelope:
    try:
        doc = json.loads(data)
        sigs = [(s.get("keyid", ""), base64.b64decode(s["sig"], validate=True))
                for s in doc["signatures"]]
        return Envelope(doc["payloadType"], base64.b64decode(doc["payload"], validate=True), sigs)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise SignatureError(f"{where}: malformed DSSE envelope") from None


def encode_envelope(env: Envelope) -> bytes:
    """Field order and the trailing newline as the reference writer produces them."""
    doc = {"payloadType": env.payload_type,
           "payload": base64.b64encode(env.payload).decode(),
           "signatures": [{"keyid": k, "sig": base64.b64encode(s).decode()}
                          for k, s in env.signatures]}
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


# ---------------------------------------------------------------- keys
def _crypto():
    try:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    except ImportError:
        raise SignatureError("signatures need the Python package 'cryptography'") from None
    return hashes, serialization, ec, ed25519, padding, rsa


def _algorithm(key) -> str:
    _, _, ec, ed25519, _, rsa = _crypto()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ED25519"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA-{key.curve.name}"
    raise SignatureError(f"unsupported key type {type(key).__name__}")


def key_id(public) -> str:
    _, serialization, *_ = _crypto()
    line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    wire = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(wire).digest()).decode().rstrip("=")


def load_pem(path: str, *, private: bool = False) -> PemKey:
    """A PEM public key, or (``private``) an unencrypted PEM private key."""
    _, serialization, *_ = _crypto()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SignatureError(f"cannot read key {path}: {e.strerror}") from None
    try:
        if private:
            key = serialization.load_pem_private_key(data, password=None)
            pk = PemKey(path, key.public_key(), key)
        else:
            pub = (serialization.load_pem_private_key(data, password=None).public_key()
                   if b"PRIVATE KEY" in data else serialization.load_pem_public_key(data))
            pk = PemKey(path, pub)
    except TypeError:
        raise SignatureError(f"{path}: encrypted private keys are not supported") from None
    except (ValueError, UnicodeDecodeError):
        kind = "private" if private else "public"
        raise SignatureError(f"{path}: not a PEM {kind} key") from None
    pk.algorithm                      # refuses key types SIF signatures do not use
    return pk


def sign_pae(key: PemKey, message: bytes) -> bytes:
    hashes, _, ec, ed25519, padding, rsa = _crypto()
    k = key.private
    if isinstance(k, ed25519.Ed25519PrivateKey):
        return k.sign(message)
    if isinstance(k, rsa.RSAPrivateKey):
        return k.sign(message, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(k, ec.EllipticCurvePrivateKey):
        return k.sign(message, ec.ECDSA(hashes.SHA256()))
    raise SignatureError(f"{key.path}: unsupported key type")


def verify_pae(key: PemKey, message: bytes, sig: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    hashes, _, ec, ed25519, padding, rsa = _crypto()
    k = key.public
    try:
        if isinstance(k, ed25519.Ed25519PublicKey):
            k.verify(sig, message)
        elif isinstance(k, rsa.RSAPublicKey):
            k.verify(sig, message, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(k, ec.EllipticCurvePublicKey):
            k.verify(sig, message, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def sign_envelope(payload: bytes, keys: list) -> bytes:
    msg = pae(PAYLOAD_TYPE, payload)
    return encode_envelope(Envelope(PAYLOAD_TYPE, payload,
                                    [(k.keyid, sign_pae(k, msg)) for k in keys]))


def verify_envelope(env: Envelope, keys: list) -> list:
    """The keys (PemKey) that made at least one of the envelope's signatures."""
    msg = pae(env.payload_type, env.payload)
    return [k for k in keys if any(verify_pae(k, msg, s) for _, s in env.signatures)]


def new_ed25519() -> tuple:
    """(private PEM, public PEM) of a fresh Ed25519 key: PKCS#8 and SubjectPublicKeyInfo."""
    _, serialization, _, ed25519, _, _ = _crypto()
    key = ed25519.Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return priv, pub
