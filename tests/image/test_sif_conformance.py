"""The SIF reader against the reference images of the format's own test suite.

Every file in ../shared/sif-conformance/images/ must be read and reported exactly as its
expected.json (made with an independent parser from the published layout) says, field by field.
"""
import json

import pytest

from hpccont.image import sif
from tests_image_util import conformance_names

NAMES = conformance_names()


def test_every_file_has_an_expectation(conformance):
    images, expected = conformance
    on_disk = sorted(p.name for p in images.iterdir())
    assert on_disk, "no conformance images found"
    assert on_disk == sorted(expected), "images and expected.json disagree about the file set"


@pytest.mark.parametrize("name", NAMES)
def test_header_fields(conformance, name):
    images, expected = conformance
    header = sif.read_sif(str(images / name)).header.to_dict()
    for key, want in expected[name]["header"].items():
        assert header[key] == want, f"{name}: header {key}"


@pytest.mark.parametrize("name", NAMES)
def test_objects_field_by_field(conformance, name):
    images, expected = conformance
    objects = [d.to_dict() for d in sif.read_sif(str(images / name)).descriptors]
    want_objects = expected[name]["objects"]
    assert [o["id"] for o in objects] == [o["id"] for o in want_objects], name
    for got, want in zip(objects, want_objects):
        for key, value in want.items():
            assert got.get(key) == value, f"{name}: object {want['id']} field {key}"


@pytest.mark.parametrize("name", NAMES)
def test_cli_json_matches_expected(conformance, hpccont, name):
    images, expected = conformance
    r = hpccont("sif", "list", "--json", images / name)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == expected[name]


def test_signature_extras_legacy_pgp(conformance):
    images, _ = conformance
    image = sif.read_sif(str(images / "one-group-signed-legacy.sif"))
    sig = image.find(sif.DATA_SIGNATURE)[0]
    assert sif.HASH_TYPES[sig.hash_type] == "SHA384"
    assert sig.entity_fingerprint == "12045c8c0b1004d058de4beda20c27ee7ff7ba84"
    assert (sig.linked_id, sig.linked_to_group) == (2, False)
    # a legacy signature is a clear-signed text whose body starts with SIFHASH
    assert b"SIFHASH" in image.read_object(sig)


def test_group_links_and_primary_partition(conformance):
    images, _ = conformance
    image = sif.read_sif(str(images / "two-groups-signed-dsse.sif"))
    sigs = image.find(sif.DATA_SIGNATURE)
    assert [(s.linked_id, s.linked_to_group, s.group_id) for s in sigs] == [(1, True, 0), (2, True, 0)]
    assert [s.raw_link for s in sigs] == [0xF0000001, 0xF0000002]
    prim = image.primary_partition()
    assert (prim.id, prim.fs_type, prim.part_arch) == (2, sif.FS_SQUASH, "386")
    assert image.read_object(prim)[:4] == b"hsqs"


def test_dsse_envelope_payload_type(conformance):
    images, _ = conformance
    image = sif.read_sif(str(images / "one-group-signed-dsse.sif"))
    envelope = json.loads(image.read_object(image.find(sif.DATA_SIGNATURE)[0]))
    assert envelope["payloadType"] == "application/vnd.sylabs.sif-metadata+json"
    assert len(envelope["signatures"]) == 2


def test_descriptor_pack_round_trip(conformance):
    """Every used descriptor re-encodes to the bytes it was read from."""
    images, _ = conformance
    for path in sorted(images.iterdir()):
        raw = path.read_bytes()
        image = sif.read_sif(str(path))
        assert image.header.pack() == raw[:sif.HEADER_SIZE], path.name
        for i, d in enumerate(image.descriptors):
            pos = image.header.descriptors_offset + i * sif.DESCRIPTOR_SIZE
            assert d.pack() == raw[pos:pos + sif.DESCRIPTOR_SIZE], f"{path.name} object {d.id}"
