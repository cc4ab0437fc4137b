"""SIF signatures, compatible with the SIF reference implementation and ``apptainer sign/verify``.

A signature is a data object of type Signature (0x4005).  Current images carry a DSSE envelope
(dsse.py) or an OpenPGP clear-signed message (pgp.py) whose payload is the *image metadata*::

    {"version":1,"header":{"digest":"sha256:<hex>"},
     "objects":[{"relativeId":0,"descriptorDigest":"sha256:<hex>","objectDigest":"sha256:<hex>"}]}

* header digest: launch script (32 bytes), magic (10), version (3) and image id (16), raw.  Not
  the arch, times or counts: adding a signature object changes those.
* descriptor digest: data type (i32), used (u8), id relative to the group's lowest id (u32),
  raw link (u32, group mask kept), size, created_at, uid, gid (i64 each), name (128 bytes) and
  extra (384 bytes), little-endian.  Relative ids keep a group's signature valid if the objects
  are renumbered as a whole; offsets are left out for the same reason.
* object digest: the object's data bytes.

Such a signature object has no group and is linked to the group it covers.  The set of signed
ids must be exactly the group's current (non-signature) objects.

Legacy signatures (Singularity before 3.6) clear-sign the text ``SIFHASH:\\n<hex digest>\\n`` of
the data of the object they are linked to (or of all objects of a linked group, concatenated),
with the hash type of the descriptor.  They protect no descriptor or header field.  For PGP
signatures the descriptor's entity must be the signer's primary key fingerprint.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field

from ..errors import SignatureError, SifError
from . import sif

# SIF hash type code -> (hashlib name, name in metadata digests)
DIGESTS = {1: ("sha256", "sha256"), 2: ("sha384", "sha384"), 3: ("sha512", "sha512")}
DIGEST_NAMES = {"sha224": "sha224", "sha256": "sha256", "sha384": "sha384", "sha512": "sha512",
                "sha512_224": "sha512_224", "sha512_256": "sha512_256"}
HASH_SHA256 = 1
LEGACY_PREFIX = b"SIFHASH:\n"
METADATA_VERSION = 1
DESCRIPTOR_INTEGRITY = "<iBIIqqqq"


@dataclass
class Verified:
    """One signature that verified."""
    signature_id: int
    kind: str                       # dsse | pgp | legacy-pgp
    signers: list                   # "ED25519 SHA256:..." or "PGP <fpr> <uid>"
    objects: list = field(default_factory=list)   # covered object ids
    group: int = 0
    entity: str = ""                # PGP: the signer's primary user id
    fingerprint: str = ""           # PGP: primary key fingerprint (upper-case hex)

    def to_dict(self) -> dict:
        return {"signature": self.signature_id, "kind": self.kind, "signers": self.signers,
                "group": self.group, "objects": self.objects, "entity": self.entity,
                "fingerprint": self.fingerprint}


# ---------------------------------------------------------------- metadata
def header_integrity(path: str) -> bytes:
    with open(path, "rb") as f:
        raw = f.read(64)
    return raw[0:45] + raw[48:64]


def descriptor_integrity(d: sif.Descriptor, relative_id: int) -> bytes:
    return struct.pack(DESCRIPTOR_INTEGRITY, d.data_type, int(d.used), relative_id, d.raw_link,
                       d.size, d.created_at, d.uid, d.gid) + \
        d.name.encode().ljust(sif.NAME_LEN, b"\x00") + d.extra


def _hash(name: str, chunks) -> str:
    h = hashlib.new(name)
    for c in chunks:
        h.update(c)
    return f"{DIGEST_NAMES[name]}:{h.hexdigest()}"


def group_objects(image: sif.SifImage, group: int) -> list:
    return sorted((d for d in image.descriptors
                   if d.group_id == group and d.raw_group != sif.GROUP_MASK
                   and d.data_type != sif.DATA_SIGNATURE), key=lambda d: d.id)


def image_metadata(image: sif.SifImage, group: int, hash_name: str = "sha256",
                   ids: list | None = None) -> dict:
    """The signed metadata of ``group``'s objects (or of its objects ``ids`` only: ids are
    relative to the group's lowest id either way, as the reference writes them)."""
    objs = group_objects(image, group)
    if not objs:
        raise SignatureError(f"{image.path}: no objects in group {group}")
    min_id = objs[0].id
    if ids is not None:
        objs = [d for d in objs if d.id in ids]
    return {"version": METADATA_VERSION,
            "header": {"digest": _hash(hash_name, [header_integrity(image.path)])},
            "objects": [{"relativeId": d.id - min_id,
                         "descriptorDigest": _hash(hash_name,
                                                   [descriptor_integrity(d, d.id - min_id)]),
                         "objectDigest": _hash(hash_name, image.iter_object(d))}
                        for d in objs]}


def _digest_name(value: object, where: str) -> str:
    if not isinstance(value, str) or value.count(":") != 1:
        raise SignatureError(f"{where}: malformed digest in signed metadata")
    name = value.split(":")[0]
    if name not in DIGEST_NAMES:
        raise SignatureError(f"{where}: unsupported digest algorithm {name!r}")
    return name


def check_metadata(image: sif.SifImage, group: int, payload: bytes, where: str,
                   subset_ok: bool = False) -> list:
    """Compare signed metadata with the image now; the covered object ids, or SignatureError.

    The signed objects must be exactly the group's current objects, unless ``subset_ok``
    (``verify --sif-id``): then a signature over some of them verifies those."""
    try:
        md = json.loads(payload)
        header_digest = md["header"]["digest"]
        signed = {int(o["relativeId"]): o for o in md["objects"]}
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
        raise SignatureError(f"{where}: malformed signed metadata") from None
    if md.get("version") != METADATA_VERSION:
        raise SignatureError(f"{where}: unsupported signed metadata version {md.get('version')!r}")
    name = _digest_name(header_digest, where)
    if _hash(name, [header_integrity(image.path)]) != header_digest:
        raise SignatureError(f"{where}: image changed since signing (global header)")
    objs = group_objects(image, group)
    min_id = objs[0].id if objs else 0
    now = {d.id - min_id: d for d in objs}
    if subset_ok and set(signed) <= set(now):
        now = {rel: d for rel, d in now.items() if rel in signed}
    if set(now) != set(signed):
        raise SignatureError(f"{where}: image changed since signing (signed objects "
                             f"{sorted(r + min_id for r in signed)}, group {group} now has "
                             f"{sorted(d.id for d in objs)})")
    for rel, d in sorted(now.items()):
        o = signed[rel]
        dd, od = o.get("descriptorDigest"), o.get("objectDigest")
        if _hash(_digest_name(dd, where), [descriptor_integrity(d, rel)]) != dd:
            raise SignatureError(f"{where}: image changed since signing (descriptor of object {d.id})")
        if _hash(_digest_name(od, where), image.iter_object(d)) != od:
            raise SignatureError(f"{where}: image changed since signing (data of object {d.id})")
    return sorted(d.id for d in now.values())


# ---------------------------------------------------------------- keys
@dataclass
class Keyring:
    pem: list          # dsse.PemKey
    pgp: list          # paths of armored/binary PGP public keys


def load_keys(paths: list) -> Keyring:
    from . import dsse, pgp
    ring = Keyring([], [])
    for p in paths:
        if not os.path.isfile(p):
            raise SignatureError(f"key file not found: {p}")
        if pgp.is_pgp_key_file(p):
            ring.pgp.append(os.path.abspath(p))
        else:
            ring.pem.append(dsse.load_pem(p))
    return ring


def site_keyring() -> list:
    from ..config import load
    return list(load()["signatures"]["keyring"])


# ---------------------------------------------------------------- verification
def signature_target(image: sif.SifImage, sig: sif.Descriptor) -> tuple:
    """(group, [objects]) a signature object covers, by its link."""
    if sig.linked_to_group:
        return sig.linked_id, group_objects(image, sig.linked_id)
    return (sig.group_id if sig.raw_group != sif.GROUP_MASK else 0), [image.get(sig.linked_id)]


def _verify_dsse(image, sig, data, ring, where, subset_ok: bool = False) -> Verified:
    from . import dsse
    env = dsse.parse_envelope(data, where)
    if env.payload_type != dsse.PAYLOAD_TYPE:
        raise SignatureError(f"{where}: unexpected DSSE payload type {env.payload_type!r}")
    if not ring.pem:
        raise SignatureError(f"{where}: no matching key (DSSE signature, no PEM key given)")
    keys = dsse.verify_envelope(env, ring.pem)
    if not keys:
        raise SignatureError(f"{where}: no matching key or bad signature "
                             f"(key ids {', '.join(k for k, _ in env.signatures) or 'none'})")
    group = _linked_group(sig, where)
    ids = check_metadata(image, group, env.payload, where, subset_ok)
    return Verified(sig.id, "dsse", [f"{k.algorithm} {k.keyid} ({k.path})" for k in keys],
                    ids, group)


def _linked_group(sig: sif.Descriptor, where: str) -> int:
    if not sig.linked_to_group:
        raise SignatureError(f"{where}: signature is linked to object {sig.linked_id}, "
                             "not to a group")
    return sig.linked_id


def is_legacy(data: bytes) -> bool:
    """A legacy signature (Singularity before 3.6): clear-signed ``SIFHASH:`` text."""
    from . import pgp
    return pgp.is_clearsigned(data) and pgp.clearsigned_text(data).startswith(LEGACY_PREFIX)


def _verify_pgp(image, sig, data, ring, where, legacy: bool = False,
                subset_ok: bool = False) -> Verified:
    from . import pgp
    if not ring.pgp:
        raise SignatureError(f"{where}: no matching key (PGP signature, no PGP key given)")
    res = pgp.verify_clearsigned(data, ring.pgp, where)
    if res is None:
        raise SignatureError(f"{where}: no matching key (signed by "
                             f"{sig.entity_fingerprint.upper() or 'an unknown key'})")
    if res.fingerprint.lower() != sig.entity_fingerprint:
        raise SignatureError(f"{where}: signer {res.fingerprint} does not match the "
                             f"fingerprint in the descriptor")
    who = [f"PGP {res.fingerprint} {res.uid}".rstrip()]
    text = res.text
    if text.startswith(LEGACY_PREFIX):
        if not legacy:
            raise SignatureError(f"{where}: legacy signature (protects no descriptor or header): "
                                 "accepted only with --legacy-insecure")
        group, ids = _check_legacy(image, sig, text, where)
        return Verified(sig.id, "legacy-pgp", who, ids, group, entity=res.uid,
                        fingerprint=res.fingerprint.upper())
    group = _linked_group(sig, where)
    return Verified(sig.id, "pgp", who, check_metadata(image, group, text, where, subset_ok),
                    group, entity=res.uid, fingerprint=res.fingerprint.upper())


def _check_legacy(image, sig, text: bytes, where: str) -> tuple:
    if sig.hash_type not in DIGESTS:
        raise SignatureError(f"{where}: unsupported hash type {sig.hash_type}")
    name = DIGESTS[sig.hash_type][0]
    want = text[len(LEGACY_PREFIX):].strip().decode("ascii", "replace").lower()
    group, objs = signature_target(image, sig)
    h = hashlib.new(name)
    for d in objs:
        for chunk in image.iter_object(d):
            h.update(chunk)
    if h.hexdigest() != want:
        raise SignatureError(f"{where}: image changed since signing (data of object(s) "
                             f"{', '.join(str(d.id) for d in objs)})")
    return group, [d.id for d in objs]


def check_signatures(path: str, keys: list | None = None, legacy: bool = False,
                     group_id: int | None = None, sif_id: int | None = None) -> list:
    """[(signature id, Verified or SignatureError)] for every signature object of an image.

    Errors that concern the whole image (unreadable, no signatures, no keys) are raised.
    Legacy signatures (``SIFHASH:``, Singularity before 3.6) cover object data only: as in
    Apptainer they are not looked at unless ``legacy`` (``verify --legacy-insecure``).
    ``group_id``/``sif_id``: only the signatures covering that group / that object
    (``verify --group-id``/``--sif-id``); a signature over part of a group counts for
    ``sif_id``.
    """
    from . import dsse, pgp
    try:
        image = sif.read_sif(path)
    except SifError as e:
        raise SignatureError(f"cannot verify {path}: {e.one_line()}") from None
    sigs = image.find(sif.DATA_SIGNATURE)
    if not sigs:
        raise SignatureError(f"{path}: no signatures")
    if not legacy:
        kept = []
        for sig in sigs:
            try:
                if not is_legacy(image.read_object(sig)):
                    kept.append(sig)
            except SifError:
                kept.append(sig)          # reported below
        if not kept:
            raise SignatureError(f"{path}: no signatures (only legacy signatures, which protect "
                                 "no descriptor or header; --legacy-insecure checks them)")
        sigs = kept
    if group_id is not None or sif_id is not None:
        sigs = [sig for sig in sigs if _covers(image, sig, group_id, sif_id)]
        if not sigs:
            what = f"group {group_id}" if group_id is not None else f"object {sif_id}"
            raise SignatureError(f"{path}: no signature covers {what}")
    paths = site_keyring() if keys is None else list(keys)
    if not paths:
        raise SignatureError(f"{path}: no keys to verify with (give --key, or set the site's "
                             "signatures.keyring)")
    ring = load_keys(paths)
    out = []
    for sig in sigs:
        where = f"{path}: signature object {sig.id}"
        try:
            data = image.read_object(sig)
            subset = sif_id is not None
            if dsse.looks_like_envelope(data):
                v = _verify_dsse(image, sig, data, ring, where, subset)
            elif pgp.is_clearsigned(data):
                v = _verify_pgp(image, sig, data, ring, where, legacy, subset)
            else:
                raise SignatureError(f"{where}: unknown signature format")
            if sif_id is not None and sif_id not in v.objects:
                raise SignatureError(f"{where}: does not cover object {sif_id}")
            out.append((sig.id, v))
        except SignatureError as e:
            out.append((sig.id, e))
        except SifError as e:
            out.append((sig.id, SignatureError(f"{where}: {e.one_line()}")))
    return out


def _covers(image: sif.SifImage, sig: sif.Descriptor, group_id, sif_id) -> bool:
    group, objs = signature_target(image, sig)
    if group_id is not None and group != group_id:
        return False
    return sif_id is None or any(d is not None and d.id == sif_id for d in objs)


def unsigned_objects(image_path: str, results: list) -> list:
    """Ids of the image's objects (signatures aside) that no verified signature covers."""
    image = sif.read_sif(image_path)
    covered = {i for _, r in results if isinstance(r, Verified) for i in r.objects}
    return [d.id for d in image.descriptors
            if d.data_type != sif.DATA_SIGNATURE and d.id not in covered]


def verify_image(path: str, keys: list | None = None, legacy: bool = False) -> list:
    """Every signature of a SIF image, verified; SignatureError (one line) on the first failure.

    ``keys``: PEM public key and PGP public key files; None: the site's signatures.keyring.
    ``legacy``: legacy signatures are checked too (never for the site policy).
    """
    results = check_signatures(path, keys, legacy)
    for _, r in results:
        if isinstance(r, SignatureError):
            raise r
    return [r for _, r in results]


# ---------------------------------------------------------------- signing
def sign_image(path: str, key_path: str | None = None, group: int = sif.DEFAULT_GROUP,
               pgp_fingerprint: str | None = None, object_id: int | None = None) -> Verified:
    """Add a signature object covering ``group`` (or only its object ``object_id``), written
    as the reference signer does: a DSSE envelope with the PEM private key ``key_path``, or a
    clear-signed message with the keyring's OpenPGP key ``pgp_fingerprint`` (whose fingerprint
    then goes in the descriptor as the signing entity)."""
    from . import dsse
    image = sif.read_sif(path)
    if object_id is not None:
        d = image.get(object_id) if any(o.id == object_id for o in image.descriptors) else None
        if d is None or d.data_type == sif.DATA_SIGNATURE or d.raw_group == sif.GROUP_MASK:
            raise SignatureError(f"{path}: no object {object_id} in a group to sign")
        group = d.group_id
    if group <= 0 or not group_objects(image, group):
        raise SignatureError(f"{path}: no objects in group {group} to sign")
    if image.header.descriptors_free <= 0:
        raise SignatureError(f"{path}: no free descriptor left for a signature")
    ids = [object_id] if object_id is not None else None
    payload = json.dumps(image_metadata(image, group, ids=ids), separators=(",", ":")).encode()
    covered = ids or [o.id for o in group_objects(image, group)]
    if pgp_fingerprint:
        from . import keyring
        data = keyring.clearsign(payload, pgp_fingerprint)
        extra = sif.signature_extra(HASH_SHA256, bytes.fromhex(pgp_fingerprint))
        kind, who = "pgp", [f"PGP {pgp_fingerprint}"]
    else:
        key = dsse.load_pem(key_path, private=True)
        data = dsse.sign_envelope(payload, [key])
        extra = sif.signature_extra(HASH_SHA256)
        kind, who = "dsse", [f"{key.algorithm} {key.keyid}"]
    obj = sif.ObjectInput(sif.DATA_SIGNATURE, data=data, group=0, link=group,
                          link_is_group=True, extra=extra, alignment=1)
    d = append_object(image, obj)
    return Verified(d.id, kind, who, covered, group, fingerprint=pgp_fingerprint or "")


def append_object(image: sif.SifImage, obj: sif.ObjectInput) -> sif.Descriptor:
    """Add one object after the last one: the data, a free descriptor slot, the header counts.

    Data is written first and the header last, so an interrupted write leaves the old image
    readable.  Deterministic images (zero id and times) stay deterministic, as with the
    reference writer.
    """
    h = image.header
    deterministic = h.id == b"\x00" * 16 and h.created_at == sif.ZERO_TIME
    t = sif.ZERO_TIME if deterministic else sif.build_time()
    try:
        fd = os.open(image.path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise SignatureError(f"cannot write {image.path}: {e.strerror}") from None
    try:
        table = os.pread(fd, h.descriptors_size, h.descriptors_offset)
        slot = next((i for i in range(h.descriptors_total)
                     if not table[i * sif.DESCRIPTOR_SIZE + 4]), None)
        if slot is None:
            raise SignatureError(f"{image.path}: no free descriptor left")
        unaligned = h.data_offset + h.data_size
        # never over objects a writer left beyond data_size
        end = max([unaligned] + [d.offset + d.size for d in image.descriptors])
        offset = sif.next_aligned(end, obj.alignment)
        sif._write_all(fd, obj.data, offset)
        new_id = max((d.id for d in image.descriptors), default=0) + 1
        link = (sif.GROUP_MASK | obj.link) if obj.link_is_group else obj.link
        group = (sif.GROUP_MASK | obj.group) if obj.group else sif.GROUP_MASK
        swp = offset - unaligned + len(obj.data)
        d = sif.Descriptor(obj.data_type, True, new_id, group, link, offset, len(obj.data),
                           swp, t, t, 0, 0, obj.name, obj.extra)
        sif._write_all(fd, d.pack(), h.descriptors_offset + slot * sif.DESCRIPTOR_SIZE)
        h.descriptors_free -= 1
        h.data_size += swp
        if not deterministic:
            h.modified_at = t
        sif._write_all(fd, h.pack(), 0)
    except OSError as e:
        raise SignatureError(f"cannot write {image.path}: {e.strerror}") from None
    finally:
        os.close(fd)
    image.descriptors.append(d)
    return d


def new_keypair(prefix: str) -> tuple:
    """Write PREFIX.pem (private, 0600) and PREFIX.pub.pem; returns their paths."""
    from . import dsse
    priv, pub = dsse.new_ed25519()
    priv_path, pub_path = f"{prefix}.pem", f"{prefix}.pub.pem"
    for p in (priv_path, pub_path):
        if os.path.exists(p):
            raise SignatureError(f"{p} exists; not overwriting a key")
    try:
        fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(priv)
        with open(pub_path, "wb") as f:
            f.write(pub)
    except OSError as e:
        raise SignatureError(f"cannot write key {prefix}: {e.strerror}") from None
    return priv_path, pub_path


# ---------------------------------------------------------------- runtime policy
CACHE_KIND = "sigverify"


def require_verified(path: str, kind: str, keyring: list, read: str = "") -> list:
    """The site policy ``signatures.require``: the image's signatures, verified with the keyring.

    Jobs start the same image once per task; hashing a multi-GB image each time would cost more
    than the launch.  So a success is remembered in the per-user cache, stamped with the image's
    and every key file's size, mtime, ctime, device and inode: any rewrite of either verifies
    again, even one that restores the mtime (the ctime still changes).  Failures are never
    cached.  The user can write their own cache: in rootless mode this check protects the user
    from images they did not mean to run, not the site from the user (docs/security.md).  ``read``: where to read the image (an open file of it, /proc/self/fd/N),
    when the caller holds it open so that the file checked is the file mounted.
    """
    from .. import cache
    read = read or path
    if kind != "sif":
        raise SignatureError(f"{path}: this site requires signed SIF images, and a {kind} "
                             "image cannot be signed")
    stamp = [[path] + cache.file_stamp(read)[1:]] + [cache.file_stamp(k) for k in keyring]
    hit = cache.read(CACHE_KIND, path, stamp)
    if hit:
        return hit
    if not keyring:
        raise SignatureError(f"{path}: this site requires signed images but its "
                             "signatures.keyring is empty")
    value = [v.to_dict() for v in verify_image(read, keyring)]
    cache.write(CACHE_KIND, path, stamp, value)
    return value
