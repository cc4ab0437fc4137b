"""Fuzzing the SIF reader: header and descriptor parsing, image detection (SIF, squashfs,
Singularity 2), the ``sif list|info|header`` views, the stored inspect metadata and signature
verification, on damaged real images and on raw bytes.

Seeds: a SIF written by hpccont's writer around a real squashfs filesystem (definition, labels,
environment, inspect metadata, primary partition, a signature made with a real key), and the
reference implementation's conformance images when ../shared/sif-conformance is there.  Each
input lives in a memfd and is read through /proc/self/fd/N: the code under test opens, stats
and preads a real file, without a write to disk per input.

Outcomes allowed: success, or the project's error (ImageError / SifError / SignatureError).
Whatever parses must be sane: every object inside the file, after the descriptor table, and
no two objects sharing a byte.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import helpers  # noqa: E402
from fuzzlib import MemFile, Outcomes, fuzz_settings, kind, mutate, outcome  # noqa: E402

from hpccont.cli import sif_cmd  # noqa: E402
from hpccont.errors import HpccontError, SifError  # noqa: E402
from hpccont.errors import SignatureError  # noqa: E402
from hpccont.image import layout, pgp, sif, sign, source  # noqa: E402

CONFORMANCE = helpers.REPO.parent / "shared" / "sif-conformance"
CONFORMANCE_SEEDS = ("one-group.sif", "one-group-signed-pgp.sif", "one-group-signed-dsse.sif",
                     "one-group-signed-legacy.sif", "one-object-sbom.sif", "empty.sif")

# Integer fields of the header (offset, struct format): the version and arch codes are bytes.
HEADER_FIELDS = [(64 + 8 * i, "<q") for i in range(8)]
# Per descriptor: data_type, used, id, group, link, offset, size, size_with_padding, times,
# uid, gid, then the first ints of the type-specific extra (fs type, partition type).
DESCRIPTOR_FIELDS = ([(0, "<i"), (4, "<B"), (5, "<I"), (9, "<I"), (13, "<I")]
                     + [(17 + 8 * i, "<q") for i in range(7)] + [(201, "<i"), (205, "<i")])


def fields_of(n_descriptors: int) -> list:
    out = list(HEADER_FIELDS) + [(40, "<H"), (45, "<H")]          # version, arch digits
    for i in range(n_descriptors):
        base = sif.DESCRIPTORS_OFFSET + i * sif.DESCRIPTOR_SIZE
        out += [(base + off, fmt) for off, fmt in DESCRIPTOR_FIELDS]
    return out


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """(bytes, fields, public key files) of each seed image."""
    tmp = tmp_path_factory.mktemp("sif-seeds")
    root = tmp / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "hello").write_text("#!/bin/sh\necho hello\n")
    part = helpers.mksquashfs(root, tmp / "root.sqfs")
    meta = {"data": {"attributes": {"labels": {"a": "b"}, "deffile": "Bootstrap: scratch\n",
                                    "runscript": "#!/bin/sh\n", "environment": {"x": "y"}}},
            "type": "container"}
    objects = [
        sif.ObjectInput(sif.DATA_DEFFILE, data=b"Bootstrap: scratch\n"),
        sif.ObjectInput(sif.DATA_LABELS, data=b'{"org.label-schema.name": "fuzz"}'),
        sif.ObjectInput(sif.DATA_ENVVAR, data=b"export A=1\n"),
        sif.ObjectInput(sif.DATA_GENERIC_JSON, data=json.dumps(meta).encode(),
                        name=layout.SIF_METADATA_NAME),
        sif.ObjectInput(sif.DATA_PARTITION, path=str(part),
                        extra=sif.partition_extra(sif.FS_SQUASH, sif.PART_PRIMSYS, "amd64")),
    ]
    out = tmp / "own.sif"
    sif.create_sif(str(out), objects, capacity=8, timestamp=1700000000)
    key_prefix = tmp / "key"
    private, public = sign.new_keypair(str(key_prefix))
    sign.sign_image(str(out), private)
    found = [(out.read_bytes(), [str(public)])]
    keys = ([str(p) for p in sorted((CONFORMANCE / "keys").glob("*"))]
            if CONFORMANCE.is_dir() else [])
    for name in CONFORMANCE_SEEDS:
        p = CONFORMANCE / "images" / name
        if p.exists():
            found.append((p.read_bytes(), keys))
    squash = (tmp / "root.sqfs").read_bytes()
    legacy = b"#!/usr/bin/env run-singularity\n" + squash
    found += [(squash, []), (legacy, [])]
    return [(data, fields_of(min(8, _descriptor_count(data))), k) for data, k in found]


def _descriptor_count(data: bytes) -> int:
    return (sif.Header.unpack(data).descriptors_total
            if data[32:42] == sif.MAGIC else 0)


def check_sane(image: sif.SifImage) -> None:
    """What the reader accepted cannot point outside the file or at shared bytes."""
    h = image.header
    table_end = h.descriptors_offset + h.descriptors_size
    assert 0 < h.descriptors_total <= 1 << 16 and table_end <= image.file_size
    spans = []
    for d in image.descriptors:
        assert 0 <= d.offset and 0 <= d.size and d.offset + d.size <= image.file_size, d
        if d.size:
            assert d.offset >= table_end, d
            spans.append((d.offset, d.offset + d.size))
    spans.sort()
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start, spans
    assert len({d.id for d in image.descriptors}) == len(image.descriptors)


def read_everything(path: str, keys: list) -> str:
    """Every reader of a SIF file that runs without a subprocess."""
    src = source.open_image(path)
    if src.kind != "sif":
        assert 0 <= src.offset and src.offset + src.size <= os.stat(path).st_size
        return src.kind
    image = sif.read_sif(path)
    check_sane(image)
    json.dumps(image.to_dict())
    sif_cmd.list_text(image)
    sif_cmd.header_text(image.header)
    for d in image.descriptors:
        sif_cmd.info_text(d)
        if d.size <= 1 << 16:
            assert len(image.read_object(d)) == d.size
    layout._stored_metadata(image, sif)
    if keys and image.find(sif.DATA_SIGNATURE):
        for _, result in sign.check_signatures(path, keys, legacy=True):
            assert isinstance(result, (sign.Verified, HpccontError)), result
    return "sif"


def _no_gpg(data, key_files, where):
    raise SignatureError(f"{where}: OpenPGP signature (gpg is not run while fuzzing)")


# The first byte picks the seed (or raw bytes), the rest is the tape or the raw input.
inputs = st.binary(min_size=1, max_size=49)


def test_fuzz_sif_reader(seeds, monkeypatch):
    mem = MemFile("fuzz.sif")
    seen = Outcomes()
    # OpenPGP signatures are checked by gpg, one process per check: not fuzzed here.
    monkeypatch.setattr(pgp, "verify_clearsigned", _no_gpg)

    @fuzz_settings()
    @given(inputs)
    def one(case):
        choice, tape = case[0] % 16, case[1:]
        if choice == 15:                        # raw bytes, sometimes behind a SIF magic
            data = tape if tape[:1] != b"S" else tape[1:33].ljust(32, b"\0") + sif.MAGIC + tape
        else:
            data, fields, keys = seeds[choice % len(seeds)]
            data = mutate(data, tape, fields)
        mem.load(data)
        keys = [] if choice == 15 else seeds[choice % len(seeds)][2]
        seen.add(kind(outcome(read_everything, mem.path, keys)))

    one()
    seen.check_volume()
    # both accepted and refused inputs were exercised
    assert seen.counts.get("sif") and seen.counts.get("SifError"), seen.counts
    print(f"SIF reader: {seen.total} inputs: {seen.counts}")


HOSTILE = [
    ("past the end", lambda d, base: _set(d, base, 17, 1 << 40)),
    ("size past the end", lambda d, base: _set(d, base, 25, 1 << 40)),
    ("negative offset", lambda d, base: _set(d, base, 17, -4096)),
    ("negative size", lambda d, base: _set(d, base, 25, -1)),
    ("huge size", lambda d, base: _set(d, base, 25, (1 << 63) - 1)),
    ("offset + size overflows", lambda d, base: _set(_set(d, base, 17, (1 << 62)), base, 25,
                                                     (1 << 62))),
    ("inside the header", lambda d, base: _set(d, base, 17, 0)),
    ("inside the descriptor table", lambda d, base: _set(d, base, 17, sif.DESCRIPTORS_OFFSET)),
]


def _set(data: bytes, base: int, off: int, value: int) -> bytes:
    buf = bytearray(data)
    buf[base + off:base + off + 8] = value.to_bytes(8, "little", signed=True)
    return bytes(buf)


def _descriptor_base(data: bytes, object_id: int) -> int:
    h = sif.Header.unpack(data)
    for i in range(h.descriptors_total):
        base = h.descriptors_offset + i * sif.DESCRIPTOR_SIZE
        d = sif.Descriptor.unpack(data, base)
        if d.used and d.id == object_id:
            return base
    raise AssertionError(f"no object {object_id}")


@pytest.mark.parametrize("what,damage", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_descriptor_is_refused(seeds, what, damage):
    data = seeds[0][0]
    hurt = damage(data, _descriptor_base(data, 2))
    with pytest.raises(SifError, match="corrupted|truncated"):
        sif.parse(hurt, "x.sif", len(hurt))


def test_overlapping_objects_are_refused(seeds):
    """Two objects claiming the same bytes (one's offset moved into the other's data): a
    signature over one would vouch for bytes the other is read from."""
    data = seeds[0][0]
    image = sif.parse(data, "x.sif", len(data))[1]
    part = next(d for d in image if d.data_type == sif.DATA_PARTITION)
    hurt = _set(data, _descriptor_base(data, 1), 17, part.offset + 8)
    with pytest.raises(SifError, match="overlap"):
        sif.parse(hurt, "x.sif", len(hurt))


def test_duplicate_object_ids_are_refused(seeds):
    data = seeds[0][0]
    buf = bytearray(data)
    base = _descriptor_base(data, 2)
    buf[base + 5:base + 9] = (1).to_bytes(4, "little")
    with pytest.raises(SifError, match="id 1"):
        sif.parse(bytes(buf), "x.sif", len(buf))


@pytest.mark.parametrize("stamp", [1 << 62, -(1 << 62), (1 << 63) - 1])
def test_sif_views_of_absurd_times(seeds, stamp, tmp_path):
    """``sif header`` and ``sif info`` print what any SIF holds, even times no clock reaches."""
    data = bytearray(seeds[0][0])
    data[64:72] = stamp.to_bytes(8, "little", signed=True)           # header created_at
    base = _descriptor_base(bytes(data), 1)
    data[base + 41:base + 49] = stamp.to_bytes(8, "little", signed=True)   # created_at
    p = tmp_path / "times.sif"
    p.write_bytes(bytes(data))
    image = sif.read_sif(str(p))
    assert "Created At:" in sif_cmd.header_text(image.header)
    assert "Created At:" in sif_cmd.info_text(image.get(1))


def test_deeply_nested_metadata_is_no_metadata(seeds, tmp_path):
    """An inspect-metadata object nested deeper than the JSON parser recurses."""
    objects = [sif.ObjectInput(sif.DATA_GENERIC_JSON, data=b"[" * 100000,
                               name=layout.SIF_METADATA_NAME)]
    p = tmp_path / "deep.sif"
    sif.create_sif(str(p), objects, capacity=4, timestamp=0)
    assert layout._stored_metadata(sif.read_sif(str(p)), sif) is None


CLI = "import sys; from hpccont.cli.main import main; sys.exit(main(sys.argv[1:], 'hpccont'))"


def test_cli_reads_fuzzed_sif_without_internal_error(seeds, tmp_path):
    """A sample of damaged images through the real command line: never 'internal error'."""
    data, fields, _ = seeds[0]
    failures = []
    for n in range(6):
        tape = bytes((n * 37 + i * 11) % 256 for i in range(4 * (1 + n % 6)))
        p = tmp_path / f"{n}.sif"
        p.write_bytes(mutate(data, tape, fields))
        for cmd in ("list", "header"):
            r = subprocess.run([sys.executable, "-c", CLI, "sif", cmd, str(p)],
                               capture_output=True, text=True, cwd=helpers.REPO)
            if r.returncode not in (0, 4) or "internal error" in r.stderr:
                failures.append((n, cmd, r.returncode, r.stderr))
    assert not failures


@pytest.mark.parametrize("payload", [b'{"header": {"digest": "sha256:0"}, "objects": '
                                     b'[{"relativeId": Infinity}]}',
                                     b'{"header": {"digest": "sha256:0"}, "objects": '
                                     b'[{"relativeId": NaN}]}',
                                     b"[" * 100000])
def test_malformed_signed_metadata_is_a_signature_error(seeds, tmp_path, payload):
    """Signed metadata is checked after its signature, but a signer may sign anything."""
    p = tmp_path / "s.sif"
    p.write_bytes(seeds[0][0])
    with pytest.raises(SignatureError, match="malformed signed metadata"):
        sign.check_metadata(sif.read_sif(str(p)), 1, payload, "s.sif")
