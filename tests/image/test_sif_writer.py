"""The SIF writer: byte-for-byte what the reference writer produces, and a valid reader round trip."""
import os
import stat

import pytest

from hpccont.errors import SifError
from hpccont.image import sif
from tests_image_util import conformance_names

# Made by the older reference writer (data section at 32768, per-object uid/times): not a
# layout the current writer produces, so it cannot be reproduced byte for byte.
OLD_WRITER = {"one-group-signed-legacy.sif"}


def rebuild(image: sif.SifImage, out: str) -> None:
    """Write a new SIF from the objects of ``image`` with the same ids, groups, links, extras."""
    objects = []
    for d in image.descriptors:
        aligned = d.size_with_padding != d.size
        objects.append(sif.ObjectInput(
            d.data_type, data=image.read_object(d), name=d.name, group=d.group_id,
            link=d.linked_id, link_is_group=d.linked_to_group, extra=d.extra,
            alignment=sif.PAGE_SIZE if aligned else 1))
    h = image.header
    sif.create_sif(out, objects, launch_script=h.launch_script, image_id=h.id,
                   timestamp=h.created_at, capacity=h.descriptors_total)


@pytest.mark.parametrize("name", [n for n in conformance_names() if n not in OLD_WRITER])
def test_rewrite_is_byte_identical(conformance, tmp_path, name):
    images, _ = conformance
    src = images / name
    out = tmp_path / "rewritten.sif"
    rebuild(sif.read_sif(str(src)), str(out))
    assert out.read_bytes() == src.read_bytes()


def test_apptainer_style_image(tmp_path):
    """Deffile + JSON.Generic + PrimSys partition, page aligned, group 1, the launch line, 0755."""
    part = tmp_path / "fs.sqsh"
    part.write_bytes(b"hsqs" + b"\x00" * 5000)
    out = tmp_path / "img.sif"
    old = os.umask(0o022)
    try:
        sif.create_sif(str(out), [
            sif.ObjectInput(sif.DATA_DEFFILE, data=b"bootstrap: localimage\nfrom: /x\n"),
            sif.ObjectInput(sif.DATA_GENERIC_JSON, data=b'{"a": 1}', name="inspect-metadata"),
            sif.ObjectInput(sif.DATA_PARTITION, path=str(part),
                            extra=sif.partition_extra(sif.FS_SQUASH, sif.PART_PRIMSYS, "amd64")),
        ])
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert out.read_bytes().startswith(b"#!/usr/bin/env run-singularity\n")
    image = sif.read_sif(str(out))
    h = image.header
    assert (h.arch, h.version, h.descriptors_total, h.descriptors_free) == ("amd64", "01", 48, 45)
    assert h.id != b"\x00" * 16 and h.id[6] >> 4 == 4
    assert [d.offset % 4096 for d in image.descriptors] == [0, 0, 0]
    assert [d.group_id for d in image.descriptors] == [1, 1, 1]
    assert [d.type_label for d in image.descriptors] == ["Def.FILE", "JSON.Generic", "FS"]
    assert image.descriptors[1].name == "inspect-metadata"
    prim = image.primary_partition()
    assert image.read_object(prim) == part.read_bytes()
    assert h.data_size == sum(d.size_with_padding for d in image.descriptors)


def test_source_date_epoch(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    out = tmp_path / "t.sif"
    sif.create_sif(str(out), [sif.ObjectInput(sif.DATA_GENERIC, data=b"x")])
    image = sif.read_sif(str(out))
    assert image.header.created_at == image.header.modified_at == 1700000000
    assert image.descriptors[0].created_at == 1700000000


def test_writer_refuses_bad_input(tmp_path):
    prim = sif.partition_extra(sif.FS_SQUASH, sif.PART_PRIMSYS, "amd64")
    with pytest.raises(SifError, match="only one primary"):
        sif.create_sif(str(tmp_path / "a.sif"), [
            sif.ObjectInput(sif.DATA_PARTITION, data=b"1", extra=prim),
            sif.ObjectInput(sif.DATA_PARTITION, data=b"2", extra=prim)])
    with pytest.raises(SifError, match="unknown architecture"):
        sif.partition_extra(sif.FS_SQUASH, sif.PART_PRIMSYS, "vax")
    with pytest.raises(SifError, match="launch script"):
        sif.create_sif(str(tmp_path / "b.sif"), [], launch_script="#!" + "x" * 40)
    with pytest.raises(SifError, match="name longer"):
        sif.create_sif(str(tmp_path / "c.sif"), [sif.ObjectInput(sif.DATA_GENERIC, data=b"", name="n" * 200)])
    with pytest.raises(SifError, match="do not fit"):
        sif.create_sif(str(tmp_path / "d.sif"), [sif.ObjectInput(sif.DATA_GENERIC, data=b"")] * 3, capacity=2)
    with pytest.raises(SifError, match="cannot create"):
        sif.create_sif(str(tmp_path / "no" / "dir.sif"), [])


def test_signature_and_crypto_extras_round_trip(tmp_path):
    fpr = bytes.fromhex("12045c8c0b1004d058de4beda20c27ee7ff7ba84")
    out = tmp_path / "s.sif"
    sif.create_sif(str(out), [
        sif.ObjectInput(sif.DATA_SIGNATURE, data=b"sig", group=0, link=1, link_is_group=True,
                        extra=sif.signature_extra(sif.HASH_CODES["SHA512"], fpr)),
        sif.ObjectInput(sif.DATA_CRYPTO_MESSAGE, data=b"key", link=1,
                        extra=sif.crypto_extra(2, 0x200)),
        sif.ObjectInput(sif.DATA_SBOM, data=b"{}", extra=sif.sbom_extra(4)),
        sif.ObjectInput(sif.DATA_OCI_BLOB, data=b"{}", extra=sif.oci_extra("sha256:abc")),
    ])
    got = [d.to_dict() for d in sif.read_sif(str(out)).descriptors]
    assert (got[0]["hash_type"], got[0]["entity_fingerprint"], got[0]["group_id"],
            got[0]["linked_id"], got[0]["linked_to_group"]) == ("SHA512", fpr.hex(), 0, 1, True)
    assert (got[1]["format_type"], got[1]["message_type"], got[1]["linked_to_group"]) == ("PEM", "RSA-OAEP", False)
    assert got[2]["sbom_format"] == 4
    assert got[3]["digest"] == "sha256:abc" and got[3]["type"] == "OCIBlob"
