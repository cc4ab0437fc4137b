"""SIF v1: the Singularity Image Format, read and written byte-compatibly with Apptainer.

Layout (all integers little-endian)::

    0      global header, 128 bytes:
             launch script  32s   "#!/usr/bin/env run-singularity\\n", NUL padded
             magic          10s   "SIF_MAGIC\\0"
             version         3s   "01\\0"
             arch            3s   "02\\0" (amd64), code of the primary partition's arch
             id             16s   UUID (all zero in deterministic images)
             created_at, modified_at, descriptors_free, descriptors_total,
             descriptors_offset, descriptors_size, data_offset, data_size: 8 x int64
    4096   descriptor table: descriptors_total x 585 bytes (48 by default)
             data_type i32, used u8, id u32, group_id u32, linked_id u32,
             offset, size, size_with_padding, created_at, modified_at, uid, gid: 7 x int64,
             name 128s, extra 384s (type-specific, see EXTRA_* below)
    32176  data objects, each aligned to the page size when written by the reference code

Group ids and group links carry the 0xf0000000 mask; an object without a group stores the bare
mask.  ``size_with_padding`` counts the alignment gap before the object as well.

This module reads with ``struct`` and ``os.pread`` only, because ``open_image`` (image/source.py)
runs it on every ``hpccont exec``.  The writer at the end of the file follows the reference
implementation's object order and alignment so that Apptainer reads what hpccont writes.
"""
from __future__ import annotations

import os
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:           # typing costs milliseconds at import; only checkers need it
    from typing import Iterator

from ..errors import SifError

HEADER_FORMAT = "<32s10s3s3s16s8q"
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)          # 128
DESCRIPTOR_FORMAT = "<iBIII7q128s384s"
DESCRIPTOR_SIZE = struct.calcsize(DESCRIPTOR_FORMAT)  # 585
MAGIC = b"SIF_MAGIC\x00"
MAGIC_OFFSET = 32
LAUNCH_SCRIPT = "#!/usr/bin/env run-singularity\n"
LAUNCH_SCRIPT_LEN = 32
NAME_LEN = 128
EXTRA_LEN = 384
VERSION = "01"
DEFAULT_DESCRIPTORS = 48
DESCRIPTORS_OFFSET = 4096
GROUP_MASK = 0xF0000000
DEFAULT_GROUP = 1
# Go's zero time.Time as Unix seconds: what deterministic images store as "no time".
ZERO_TIME = -62135596800

# ---------------------------------------------------------------- type tables
DATA_DEFFILE = 0x4001
DATA_ENVVAR = 0x4002
DATA_LABELS = 0x4003
DATA_PARTITION = 0x4004
DATA_SIGNATURE = 0x4005
DATA_GENERIC_JSON = 0x4006
DATA_GENERIC = 0x4007
DATA_CRYPTO_MESSAGE = 0x4008
DATA_SBOM = 0x4009
DATA_OCI_BLOB = 0x400A
DATA_OCI_ROOT_INDEX = 0x400B

# code -> (name used in hpccont's JSON and the conformance data, name `sif list` prints)
DATA_TYPES: dict[int, tuple[str, str]] = {
    DATA_DEFFILE: ("Deffile", "Def.FILE"),
    DATA_ENVVAR: ("EnvVar", "Env.Vars"),
    DATA_LABELS: ("Labels", "JSON.Labels"),
    DATA_PARTITION: ("Partition", "FS"),
    DATA_SIGNATURE: ("Signature", "Signature"),
    DATA_GENERIC_JSON: ("GenericJSON", "JSON.Generic"),
    DATA_GENERIC: ("Generic", "Generic/Raw"),
    DATA_CRYPTO_MESSAGE: ("CryptoMessage", "Cryptographic Message"),
    DATA_SBOM: ("SBOM", "SBOM"),
    DATA_OCI_BLOB: ("OCIBlob", "OCI.Blob"),
    DATA_OCI_ROOT_INDEX: ("OCIRootIndex", "OCI.RootIndex"),
}
DATA_TYPE_CODES = {v[0]: k for k, v in DATA_TYPES.items()}

FS_SQUASH, FS_EXT3, FS_ARCHIVE, FS_RAW, FS_ENCRYPTED_SQUASH = 1, 2, 3, 4, 5
FS_TYPES = {FS_SQUASH: "Squashfs", FS_EXT3: "Ext3", FS_ARCHIVE: "Archive", FS_RAW: "Raw",
            FS_ENCRYPTED_SQUASH: "Encrypted squashfs"}

PART_SYSTEM, PART_PRIMSYS, PART_DATA, PART_OVERLAY = 1, 2, 3, 4
# code -> (name in JSON / conformance data, name `sif list` prints: "*System" marks the primary)
PART_TYPES = {PART_SYSTEM: ("System", "System"), PART_PRIMSYS: ("PrimSys", "*System"),
              PART_DATA: ("Data", "Data"), PART_OVERLAY: ("Overlay", "Overlay")}

HASH_TYPES = {1: "SHA256", 2: "SHA384", 3: "SHA512", 4: "BLAKE2S", 5: "BLAKE2B"}
HASH_CODES = {v: k for k, v in HASH_TYPES.items()}
CRYPTO_FORMATS = {1: "OpenPGP", 2: "PEM"}
CRYPTO_MESSAGES = {0x100: "Clear Signature", 0x200: "RSA-OAEP"}
SBOM_FORMATS = {1: "cyclonedx-json", 2: "cyclonedx-xml", 3: "github-json", 4: "spdx-json",
                5: "spdx-rdf", 6: "spdx-tag-value", 7: "spdx-yaml", 8: "syft-json"}

# two-character arch codes <-> Go architecture names (what the reference tools print)
ARCH_CODES = {"00": "unknown", "01": "386", "02": "amd64", "03": "arm", "04": "arm64",
              "05": "ppc64", "06": "ppc64le", "07": "mips", "08": "mipsle", "09": "mips64",
              "10": "mips64le", "11": "s390x", "12": "riscv64"}
ARCH_BY_NAME = {v: k for k, v in ARCH_CODES.items()}
# uname -m -> Go architecture name
MACHINE_ARCH = {"x86_64": "amd64", "i386": "386", "i486": "386", "i586": "386", "i686": "386",
                "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "ppc64": "ppc64",
                "ppc64le": "ppc64le", "s390x": "s390x", "mips": "mips", "mips64": "mips64",
                "riscv64": "riscv64"}

SIGNATURE_ENTITY_LEN = 256
FINGERPRINT_LEN = 20
OCI_DIGEST_LEN = 256


def _cstr(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", "replace")


def arch_name(code: bytes) -> str:
    return ARCH_CODES.get(_cstr(code), "unknown")


def host_arch() -> str:
    machine = os.uname().machine
    return MACHINE_ARCH.get(machine, machine)


# ---------------------------------------------------------------- data structures
class Header:
    """The 128-byte global header.  Plain class (no dataclass): it is built on every exec."""
    __slots__ = ("launch_script", "magic", "version", "arch", "id", "created_at", "modified_at",
                 "descriptors_free", "descriptors_total", "descriptors_offset",
                 "descriptors_size", "data_offset", "data_size")

    def __init__(self, launch_script: str, magic: bytes, version: str, arch: str, id: bytes,
                 created_at: int, modified_at: int, descriptors_free: int,
                 descriptors_total: int, descriptors_offset: int, descriptors_size: int,
                 data_offset: int, data_size: int):
        self.launch_script = launch_script
        self.magic = magic
        self.version = version
        self.arch = arch            # Go name: "amd64", "386", "unknown"
        self.id = id                # 16 raw bytes
        self.created_at = created_at
        self.modified_at = modified_at
        self.descriptors_free = descriptors_free
        self.descriptors_total = descriptors_total
        self.descriptors_offset = descriptors_offset
        self.descriptors_size = descriptors_size
        self.data_offset = data_offset
        self.data_size = data_size

    @property
    def id_hex(self) -> str:
        return self.id.hex()

    @property
    def uuid(self) -> str:
        h = self.id.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    @classmethod
    def unpack(cls, raw: bytes) -> "Header":
        (launch, magic, version, arch, uid, ctime, mtime, dfree, dtotal, doff, dsize,
         dataoff, datasize) = struct.unpack_from(HEADER_FORMAT, raw, 0)
        return cls(launch_script=_cstr(launch), magic=magic, version=_cstr(version),
                   arch=arch_name(arch), id=uid, created_at=ctime, modified_at=mtime,
                   descriptors_free=dfree, descriptors_total=dtotal, descriptors_offset=doff,
                   descriptors_size=dsize, data_offset=dataoff, data_size=datasize)

    def pack(self) -> bytes:
        launch = self.launch_script.encode()
        if len(launch) >= LAUNCH_SCRIPT_LEN:
            raise SifError(f"launch script longer than {LAUNCH_SCRIPT_LEN - 1} bytes")
        return struct.pack(HEADER_FORMAT, launch, MAGIC, self.version.encode(),
                           ARCH_BY_NAME.get(self.arch, "00").encode(), self.id,
                           self.created_at, self.modified_at, self.descriptors_free,
                           self.descriptors_total, self.descriptors_offset,
                           self.descriptors_size, self.data_offset, self.data_size)

    def to_dict(self) -> dict:
        return {"launch_script": self.launch_script, "version": self.version,
                "arch": self.arch, "id": self.id_hex, "created_at": self.created_at,
                "modified_at": self.modified_at, "descriptors_free": self.descriptors_free,
                "descriptors_total": self.descriptors_total,
                "descriptors_offset": self.descriptors_offset,
                "descriptors_size": self.descriptors_size, "data_offset": self.data_offset,
                "data_size": self.data_size}


class Descriptor:
    """One 585-byte object descriptor."""
    __slots__ = ("data_type", "used", "id", "raw_group", "raw_link", "offset", "size",
                 "size_with_padding", "created_at", "modified_at", "uid", "gid", "name", "extra")

    def __init__(self, data_type: int, used: bool, id: int, raw_group: int, raw_link: int,
                 offset: int, size: int, size_with_padding: int, created_at: int = 0,
                 modified_at: int = 0, uid: int = 0, gid: int = 0, name: str = "",
                 extra: bytes = b""):
        self.data_type = data_type
        self.used = used
        self.id = id
        self.raw_group = raw_group      # with GROUP_MASK
        self.raw_link = raw_link        # GROUP_MASK set when the link names a group
        self.offset = offset
        self.size = size
        self.size_with_padding = size_with_padding
        self.created_at = created_at
        self.modified_at = modified_at
        self.uid = uid
        self.gid = gid
        self.name = name
        self.extra = extra.ljust(EXTRA_LEN, b"\x00")

    def __repr__(self) -> str:
        return f"Descriptor(id={self.id}, type={self.type_name}, offset={self.offset}, size={self.size})"

    @classmethod
    def unpack(cls, raw: bytes, pos: int = 0) -> "Descriptor":
        (dtype, used, did, group, link, off, size, swp, ctime, mtime, uid, gid, name,
         extra) = struct.unpack_from(DESCRIPTOR_FORMAT, raw, pos)
        return cls(dtype, bool(used), did, group, link, off, size, swp, ctime, mtime, uid, gid,
                   _cstr(name), extra)

    def pack(self) -> bytes:
        name = self.name.encode()
        if len(name) > NAME_LEN:
            raise SifError(f"object name longer than {NAME_LEN} bytes: {self.name[:40]}...")
        return struct.pack(DESCRIPTOR_FORMAT, self.data_type, int(self.used), self.id,
                           self.raw_group, self.raw_link, self.offset, self.size,
                           self.size_with_padding, self.created_at, self.modified_at,
                           self.uid, self.gid, name, self.extra.ljust(EXTRA_LEN, b"\x00"))

    # --- common fields
    @property
    def group_id(self) -> int:
        return self.raw_group & ~GROUP_MASK & 0xFFFFFFFF

    @property
    def linked_id(self) -> int:
        return self.raw_link & ~GROUP_MASK & 0xFFFFFFFF

    @property
    def linked_to_group(self) -> bool:
        return self.raw_link & GROUP_MASK == GROUP_MASK

    @property
    def type_name(self) -> str:
        return DATA_TYPES.get(self.data_type, ("Unknown", "Unknown"))[0]

    @property
    def type_label(self) -> str:
        return DATA_TYPES.get(self.data_type, ("Unknown", "Unknown"))[1]

    # --- type-specific extras
    def _ints(self, n: int) -> tuple:
        return struct.unpack_from(f"<{n}i", self.extra, 0)

    @property
    def fs_type(self) -> int:
        return self._ints(1)[0]

    @property
    def part_type(self) -> int:
        return self._ints(2)[1]

    @property
    def part_arch(self) -> str:
        return arch_name(self.extra[8:11])

    @property
    def hash_type(self) -> int:
        return self._ints(1)[0]

    @property
    def entity_fingerprint(self) -> str:
        """Hex fingerprint of the signing key (the first 20 bytes of the entity), '' when absent."""
        fp = self.extra[4:4 + FINGERPRINT_LEN]
        return "" if fp == b"\x00" * FINGERPRINT_LEN else fp.hex()

    @property
    def crypto_format(self) -> int:
        return self._ints(1)[0]

    @property
    def crypto_message(self) -> int:
        return self._ints(2)[1]

    @property
    def sbom_format(self) -> int:
        return self._ints(1)[0]

    @property
    def oci_digest(self) -> str:
        return _cstr(self.extra[:OCI_DIGEST_LEN])

    def to_dict(self) -> dict:
        """The fields ``expected.json`` of the conformance data lists, plus the extras by type."""
        d = {"id": self.id, "type": self.type_name, "group_id": self.group_id,
             "linked_id": self.linked_id, "linked_to_group": self.linked_to_group,
             "offset": self.offset, "size": self.size,
             "size_with_padding": self.size_with_padding, "name": self.name}
        extras = EXTRA_FIELDS.get(self.data_type)
        if extras:
            d.update(extras(self))
        return d


def _partition_extras(d: Descriptor) -> dict:
    return {"fs_type": FS_TYPES.get(d.fs_type, "Unknown"),
            "part_type": PART_TYPES.get(d.part_type, ("Unknown", "Unknown"))[0],
            "part_arch": d.part_arch}


def _signature_extras(d: Descriptor) -> dict:
    return {"hash_type": HASH_TYPES.get(d.hash_type, "Unknown"),
            "entity_fingerprint": d.entity_fingerprint}


def _crypto_extras(d: Descriptor) -> dict:
    return {"format_type": CRYPTO_FORMATS.get(d.crypto_format, "Unknown"),
            "message_type": CRYPTO_MESSAGES.get(d.crypto_message, "Unknown")}


def _sbom_extras(d: Descriptor) -> dict:
    return {"sbom_format": d.sbom_format}


def _oci_extras(d: Descriptor) -> dict:
    return {"digest": d.oci_digest}


EXTRA_FIELDS = {DATA_PARTITION: _partition_extras, DATA_SIGNATURE: _signature_extras,
                DATA_CRYPTO_MESSAGE: _crypto_extras, DATA_SBOM: _sbom_extras,
                DATA_OCI_BLOB: _oci_extras, DATA_OCI_ROOT_INDEX: _oci_extras}


def partition_extra(fs_type: int, part_type: int, arch: str) -> bytes:
    code = ARCH_BY_NAME.get(arch)
    if code is None or code == "00":
        raise SifError(f"unknown architecture for a SIF partition: {arch}")
    return struct.pack("<ii3s", fs_type, part_type, code.encode())


def signature_extra(hash_type: int, fingerprint: bytes = b"") -> bytes:
    return struct.pack("<i", hash_type) + fingerprint[:SIGNATURE_ENTITY_LEN].ljust(
        SIGNATURE_ENTITY_LEN, b"\x00")


def crypto_extra(format_type: int, message_type: int) -> bytes:
    return struct.pack("<ii", format_type, message_type)


def sbom_extra(fmt: int) -> bytes:
    return struct.pack("<i", fmt)


def oci_extra(digest: str) -> bytes:
    return digest.encode()[:OCI_DIGEST_LEN]


# ---------------------------------------------------------------- reading
def read_prefix(fd: int, path: str, want: int) -> bytes:
    try:
        return os.pread(fd, want, 0)
    except IsADirectoryError:
        raise SifError(f"{path}: is a directory, not a SIF file") from None
    except OSError as e:
        raise SifError(f"cannot read {path}: {e.strerror}") from None


def parse(raw: bytes, path: str, file_size: int, fd: int | None = None
          ) -> tuple[Header, list[Descriptor]]:
    """Header and used descriptors from the file's first bytes (``raw``), fully validated.

    ``raw`` usually holds the header and the whole table (one read); when the table lies
    beyond it, the rest is read from ``fd``.
    """
    if len(raw) < HEADER_SIZE:
        if _looks_like_cut_header(raw):
            raise SifError(f"{path}: truncated SIF file ({len(raw)} bytes, "
                           f"shorter than the {HEADER_SIZE}-byte header)")
        raise SifError(f"{path}: not a SIF file (too short)")
    if raw[MAGIC_OFFSET:MAGIC_OFFSET + len(MAGIC)] != MAGIC:
        if raw.startswith(b"#!/usr/bin/env run-singularity"):
            raise SifError(f"{path}: corrupted SIF header (bad magic)")
        raise SifError(f"{path}: not a SIF file (no SIF_MAGIC)")
    h = Header.unpack(raw)
    _check_header(h, path, file_size)
    table_end = h.descriptors_offset + h.descriptors_total * DESCRIPTOR_SIZE
    if len(raw) < table_end:
        if fd is None:
            raise SifError(f"{path}: truncated SIF file (descriptor table ends at byte "
                           f"{table_end}, file has {len(raw)})")
        raw = os.pread(fd, table_end, 0)
        if len(raw) < table_end:
            raise SifError(f"{path}: truncated SIF file (descriptor table ends at byte "
                           f"{table_end}, file has {len(raw)})")
    descriptors = []
    for i in range(h.descriptors_total):
        pos = h.descriptors_offset + i * DESCRIPTOR_SIZE
        if not raw[pos + 4]:            # the "used" byte: skip unused slots cheaply
            continue
        d = Descriptor.unpack(raw, pos)
        _check_descriptor(d, path, file_size)
        descriptors.append(d)
    _check_layout(h, descriptors, path)
    return h, descriptors


def _looks_like_cut_header(raw: bytes) -> bool:
    if len(raw) > MAGIC_OFFSET:
        return MAGIC.startswith(raw[MAGIC_OFFSET:MAGIC_OFFSET + len(MAGIC)])
    return raw.startswith(b"#!/usr/bin/env run-")


def _check_header(h: Header, path: str, file_size: int) -> None:
    if h.version != VERSION:
        raise SifError(f"{path}: corrupted SIF header (unsupported version {h.version!r})")
    total = h.descriptors_total
    if total <= 0 or total > 1 << 16 or not 0 <= h.descriptors_free <= total:
        raise SifError(f"{path}: corrupted SIF header (descriptor counts "
                       f"{h.descriptors_free}/{total})")
    if h.descriptors_offset < HEADER_SIZE or h.descriptors_size != total * DESCRIPTOR_SIZE:
        raise SifError(f"{path}: corrupted SIF header (descriptor table at "
                       f"{h.descriptors_offset}, {h.descriptors_size} bytes)")
    if h.data_offset < 0 or h.data_size < 0:
        raise SifError(f"{path}: corrupted SIF header (data section {h.data_offset}+{h.data_size})")
    table_end = h.descriptors_offset + h.descriptors_size
    if table_end > file_size:
        raise SifError(f"{path}: truncated SIF file (descriptor table ends at byte {table_end}, "
                       f"file has {file_size})")


def _check_descriptor(d: Descriptor, path: str, file_size: int) -> None:
    if d.offset < 0 or d.size < 0 or d.size_with_padding < 0:
        raise SifError(f"{path}: corrupted SIF descriptor {d.id} (offset {d.offset}, "
                       f"size {d.size})")
    if d.offset + d.size > file_size:
        raise SifError(f"{path}: truncated SIF file (object {d.id} ends at byte "
                       f"{d.offset + d.size}, file has {file_size})")


def _check_layout(h: Header, descriptors: list[Descriptor], path: str) -> None:
    """Objects lie after the descriptor table, never share a byte, and have distinct ids.

    The reference writer never makes anything else, and anything else is an attack on whoever
    trusts one object for another: a signature covers object data by id and extent, so an
    object overlapping a signed one (or the header), or a second object with a signed one's
    id, would be read as vouched-for bytes it is not.
    """
    table_end = h.descriptors_offset + h.descriptors_size
    ids: set[int] = set()
    spans = []
    for d in descriptors:
        if d.id in ids:
            raise SifError(f"{path}: corrupted SIF: two objects with id {d.id}")
        ids.add(d.id)
        if d.size:
            if d.offset < table_end:
                raise SifError(f"{path}: corrupted SIF descriptor {d.id} (object at byte "
                               f"{d.offset}, inside the header or descriptor table)")
            spans.append((d.offset, d.offset + d.size, d.id))
    spans.sort()
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise SifError(f"{path}: corrupted SIF: objects {first} and {second} overlap")


class SifImage:
    """A SIF file's header and used descriptors.  Object data is read on demand."""
    __slots__ = ("path", "header", "descriptors", "file_size")

    def __init__(self, path: str, header: Header, descriptors: list[Descriptor], file_size: int):
        self.path = path
        self.header = header
        self.descriptors = descriptors
        self.file_size = file_size

    @classmethod
    def open(cls, path: str) -> "SifImage":
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise SifError(f"{path}: no such file") from None
        except PermissionError:
            raise SifError(f"{path}: permission denied") from None
        except OSError as e:
            raise SifError(f"cannot open {path}: {e.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            raw = read_prefix(fd, path, DESCRIPTORS_OFFSET + DEFAULT_DESCRIPTORS * DESCRIPTOR_SIZE)
            header, descriptors = parse(raw, path, size, fd)
        finally:
            os.close(fd)
        return cls(path, header, descriptors, size)

    def get(self, object_id: int) -> Descriptor:
        for d in self.descriptors:
            if d.id == object_id:
                return d
        raise SifError(f"{self.path}: no object with id {object_id}")

    def find(self, data_type: int) -> list[Descriptor]:
        return [d for d in self.descriptors if d.data_type == data_type]

    def primary_partition(self) -> Descriptor | None:
        for d in self.find(DATA_PARTITION):
            if d.part_type == PART_PRIMSYS:
                return d
        return None

    def iter_object(self, d: Descriptor, chunk: int = 1 << 20) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            f.seek(d.offset)
            left = d.size
            while left > 0:
                buf = f.read(min(chunk, left))
                if not buf:
                    raise SifError(f"{self.path}: truncated SIF file (object {d.id})")
                left -= len(buf)
                yield buf

    def read_object(self, d: Descriptor) -> bytes:
        return b"".join(self.iter_object(d))

    def to_dict(self) -> dict:
        return {"header": self.header.to_dict(),
                "objects": [d.to_dict() for d in self.descriptors]}


def read_sif(path: str) -> SifImage:
    return SifImage.open(path)


def overlay_partition(descriptors: list[Descriptor]) -> Descriptor | None:
    """The SIF's writable-overlay partition as Apptainer picks it: the first ext3 partition of
    the overlay type; None when there is none."""
    return next((d for d in descriptors if d.data_type == DATA_PARTITION
                 and d.part_type == PART_OVERLAY and d.fs_type == FS_EXT3), None)


def is_sif(prefix: bytes) -> bool:
    return prefix[MAGIC_OFFSET:MAGIC_OFFSET + len(MAGIC)] == MAGIC


def looks_like_sif(prefix: bytes) -> bool:
    """SIF magic, or what is left of a SIF header that was cut or damaged (then parse() says how)."""
    return (is_sif(prefix) or _looks_like_cut_header(prefix)
            or prefix.startswith(LAUNCH_SCRIPT.encode()[:30]))


# ---------------------------------------------------------------- writing
PAGE_SIZE = 4096     # the reference writer aligns every object to the page size by default


class ObjectInput:
    """One data object to write: bytes (``data``) or the contents of a file (``path``)."""
    __slots__ = ("data_type", "data", "path", "name", "group", "link", "link_is_group", "extra",
                 "alignment")

    def __init__(self, data_type: int, *, data: bytes | None = None, path: str | None = None,
                 name: str = "", group: int = DEFAULT_GROUP, link: int = 0,
                 link_is_group: bool = False, extra: bytes = b"", alignment: int = PAGE_SIZE):
        if (data is None) == (path is None):
            raise ValueError("an object needs exactly one of data= or path=")
        self.data_type = data_type
        self.data = data
        self.path = path
        self.name = name
        self.group = group                  # 0: no group
        self.link = link                    # 0: no link
        self.link_is_group = link_is_group
        self.extra = extra
        self.alignment = alignment


def next_aligned(offset: int, alignment: int) -> int:
    if alignment <= 1 or offset % alignment == 0:
        return offset
    return offset - offset % alignment + alignment


def build_time() -> int:
    """Now, or SOURCE_DATE_EPOCH for reproducible builds (as the reference tools honour it)."""
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    if sde:
        try:
            return int(sde)
        except ValueError:
            raise SifError(f"SOURCE_DATE_EPOCH is not a number: {sde!r}") from None
    import time
    return int(time.time())


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _copy_into(fd: int, src_path: str, offset: int) -> int:
    """Copy a file into ``fd`` at ``offset``; returns the bytes copied."""
    total = 0
    try:
        src = os.open(src_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SifError(f"cannot read {src_path}: {e.strerror}") from None
    try:
        while True:
            chunk = os.read(src, 1 << 20)
            if not chunk:
                return total
            _write_all(fd, chunk, offset + total)
            total += len(chunk)
    finally:
        os.close(src)


def create_sif(path: str, objects: list[ObjectInput], *, launch_script: str = LAUNCH_SCRIPT,
               image_id: bytes | None = None, timestamp: int | None = None,
               capacity: int = DEFAULT_DESCRIPTORS) -> SifImage:
    """Write a new SIF file at ``path`` (mode 0755 less umask, like the reference writer).

    Objects get ids 1..n in order, each placed at the next offset aligned to its alignment
    after the previous one; ``size_with_padding`` includes the gap, and ``data_size`` is the sum
    of those.  The header arch is the primary partition's; there may be only one primary.
    """
    if len(objects) > capacity:
        raise SifError(f"{len(objects)} objects do not fit in {capacity} descriptors")
    t = build_time() if timestamp is None else timestamp
    if image_id is None:
        image_id = _random_uuid()
    table_size = capacity * DESCRIPTOR_SIZE
    header = Header(launch_script=launch_script, magic=MAGIC, version=VERSION, arch="unknown",
                    id=image_id, created_at=t, modified_at=t, descriptors_free=capacity,
                    descriptors_total=capacity, descriptors_offset=DESCRIPTORS_OFFSET,
                    descriptors_size=table_size, data_offset=DESCRIPTORS_OFFSET + table_size,
                    data_size=0)
    header.pack()                      # validates the launch script before anything is written
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o755)
    except OSError as e:
        raise SifError(f"cannot create {path}: {e.strerror}") from None
    descriptors: list[Descriptor] = []
    try:
        for index, obj in enumerate(objects):
            d = _write_object(fd, header, obj, index + 1, t)
            if d.data_type == DATA_PARTITION and d.part_type == PART_PRIMSYS:
                if any(x.data_type == DATA_PARTITION and x.part_type == PART_PRIMSYS
                       for x in descriptors):
                    raise SifError("an image can hold only one primary system partition")
                header.arch = d.part_arch
            descriptors.append(d)
        table = b"".join(d.pack() for d in descriptors).ljust(table_size, b"\x00")
        _write_all(fd, table, DESCRIPTORS_OFFSET)
        _write_all(fd, header.pack().ljust(DESCRIPTORS_OFFSET, b"\x00"), 0)
        os.ftruncate(fd, max(header.data_offset + header.data_size,
                             max((d.offset + d.size for d in descriptors), default=0)))
    except OSError as e:
        raise SifError(f"cannot write {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    size = os.stat(path).st_size
    return SifImage(path, header, descriptors, size)


def _write_object(fd: int, header: Header, obj: ObjectInput, object_id: int, t: int) -> Descriptor:
    unaligned = header.data_offset + header.data_size
    offset = next_aligned(unaligned, obj.alignment)
    if obj.data is not None:
        _write_all(fd, obj.data, offset)
        size = len(obj.data)
    else:
        size = _copy_into(fd, obj.path, offset)
    group = GROUP_MASK | obj.group
    link = (GROUP_MASK | obj.link) if obj.link_is_group else obj.link
    d = Descriptor(obj.data_type, True, object_id, group, link, offset, size,
                   offset - unaligned + size, t, t, 0, 0, obj.name, obj.extra)
    d.pack()                           # validates the name length
    header.descriptors_free -= 1
    header.data_size += d.size_with_padding
    return d


def _random_uuid() -> bytes:
    """A random (version 4) UUID, without importing the uuid module on this path."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    return bytes(b)
