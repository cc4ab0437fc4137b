"""`hpccont sif list|info|dump|header`: the reference tools' text layout, and bad input."""
import pytest

LIST_TWO_GROUPS_DSSE = """\
------------------------------------------------------------------------------
ID   |GROUP   |LINK    |SIF POSITION (start-end)  |TYPE
------------------------------------------------------------------------------
1    |1       |NONE    |32768-32772               |FS (Raw/System/386)
2    |1       |NONE    |36864-40960               |FS (Squashfs/*System/386)
3    |2       |NONE    |40960-303104              |FS (Ext3/System/amd64)
4    |NONE    |1   (G) |303104-304798             |Signature (SHA256)
5    |NONE    |2   (G) |304798-306224             |Signature (SHA256)
"""

HEADER_LEGACY = """\
Launch Script:        #!/usr/bin/env run-singularity
Version:              01
Primary Architecture: 386
ID:                   6ecc76b7-a497-4f7f-9ebd-8da2a04c6be1
Created At:           2020-05-22 19:30:59 +0000 UTC
Modified At:          2020-06-20 20:16:39 +0000 UTC
Descriptors Free:     45
Descriptors Total:    48
Descriptors Offset:   4096
Descriptors Size:     27 KiB
Data Offset:          32768
Data Size:            9 KiB
"""

HEADER_EMPTY = """\
Version:            01
Descriptors Free:   48
Descriptors Total:  48
Descriptors Offset: 4096
Descriptors Size:   27 KiB
Data Offset:        32176
Data Size:          0 B
"""

INFO_LEGACY_SIGNATURE = """\
  Data Type:    Signature
  ID:           3
  Group ID:     1
  Linked ID:    2
  Offset:       40960
  Size:         609
  Created At:   2020-06-20 20:16:39 +0000 UTC
  Modified At:  2020-06-20 20:16:39 +0000 UTC
  Name:         part-signature
  Hash Type:    SHA384
  Entity:       12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84
"""

INFO_SBOM = """\
  Data Type:  SBOM
  ID:         1
  Group ID:   1
  Linked ID:  NONE
  Offset:     32176
  Size:       454
  Format:     cyclonedx-json
"""


def ok(r):
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_list(conformance, hpccont):
    images, _ = conformance
    assert ok(hpccont("sif", "list", images / "two-groups-signed-dsse.sif")) == LIST_TWO_GROUPS_DSSE


def test_list_named_generic_json(conformance, hpccont):
    images, _ = conformance
    out = ok(hpccont("sif", "list", images / "one-object-generic-json.sif"))
    assert out.splitlines()[3] == "1    |1       |NONE    |32176-32178               |JSON.Generic"


def test_header(conformance, hpccont):
    images, _ = conformance
    assert ok(hpccont("sif", "header", images / "one-group-signed-legacy.sif")) == HEADER_LEGACY
    assert ok(hpccont("sif", "header", images / "empty.sif")) == HEADER_EMPTY
    assert ok(hpccont("sif", "header", images / "empty-launch-script.sif")).startswith(
        "Launch Script:      #!/usr/bin/env run-script\nVersion:            01\n")


def test_info_both_argument_orders(conformance, hpccont):
    images, _ = conformance
    img = images / "one-group-signed-legacy.sif"
    assert ok(hpccont("sif", "info", img, "3")) == INFO_LEGACY_SIGNATURE
    assert ok(hpccont("sif", "info", "3", img)) == INFO_LEGACY_SIGNATURE
    assert ok(hpccont("sif", "info", images / "one-object-sbom.sif", "1")) == INFO_SBOM


def test_info_partition(conformance, hpccont):
    images, _ = conformance
    out = ok(hpccont("sif", "info", images / "two-groups.sif", "3"))
    assert "  Filesystem Type:  Ext3\n" in out
    assert "  Partition Type:   System\n" in out
    assert "  Architecture:     amd64\n" in out


def test_dump(conformance, hpccont):
    images, _ = conformance
    assert ok(hpccont("sif", "dump", images / "one-object-generic-json.sif", "1")) == "{}"
    raw = hpccont("sif", "dump", images / "one-group.sif", "2", text=False)
    assert raw.returncode == 0
    assert raw.stdout[:4] == b"hsqs" and len(raw.stdout) == 4096


@pytest.mark.parametrize("args,words", [
    (["list"], "arguments are required"),
    (["info", "IMG"], "usage"),
    (["info", "IMG", "x"], "must be a number"),
    (["frobnicate", "x"], "unknown 'sif' command"),
])
def test_usage_errors(hpccont, conformance, args, words):
    images, _ = conformance
    args = [str(images / "one-group.sif") if a == "IMG" else a for a in args]
    r = hpccont("sif", *args)
    assert r.returncode == 2
    assert words in r.stderr and len(r.stderr.splitlines()) == 1


def one_line_failure(r, *words):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0]
    assert r.stdout == ""


def test_missing_object(conformance, hpccont):
    images, _ = conformance
    one_line_failure(hpccont("sif", "info", images / "one-group.sif", "9"), "no object with id 9")


@pytest.mark.parametrize("cut", [0, 10, 100, 5000, 32100, 38000])
@pytest.mark.parametrize("cmd", ["list", "header"])
def test_truncated_files(damaged, hpccont, cut, cmd):
    path = damaged("one-group.sif", lambda d: d[:cut])
    r = hpccont("sif", cmd, path)
    one_line_failure(r, str(path))


def test_corrupted_files(damaged, hpccont, tmp_path):
    def flip(d):
        d[32] ^= 0xFF
    def bad_offset(d):
        pos = 4096 + 17
        d[pos:pos + 8] = (10 ** 12).to_bytes(8, "little")
    one_line_failure(hpccont("sif", "list", damaged("one-group.sif", flip)), "not a SIF file")
    one_line_failure(hpccont("sif", "list", damaged("one-group.sif", bad_offset)), "truncated", "object 1")
    text = tmp_path / "text.sif"
    text.write_text("just text\n")
    one_line_failure(hpccont("sif", "list", text), "not a SIF file")
    one_line_failure(hpccont("sif", "list", tmp_path / "missing.sif"), "no such file")
    one_line_failure(hpccont("sif", "list", tmp_path), "is a directory")
