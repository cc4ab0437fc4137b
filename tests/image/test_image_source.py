"""open_image: what `hpccont exec` learns about an image, and one-line errors for bad ones."""
import os
import struct

import pytest

from hpccont.errors import ImageError, SifError
from hpccont.image import sif
from hpccont.image.source import open_image

import helpers


def error_of(path) -> str:
    with pytest.raises(ImageError) as e:
        open_image(str(path))
    msg = e.value.one_line()
    assert "\n" not in str(e.value)
    assert str(path) in msg
    return msg


# ---------------------------------------------------------------- good images
def test_sif_primary_partition(conformance):
    images, expected = conformance
    src = open_image(str(images / "two-groups.sif"))
    prim = [o for o in expected["two-groups.sif"]["objects"] if o.get("part_type") == "PrimSys"][0]
    assert (src.kind, src.offset, src.size, src.fs_type) == ("sif", prim["offset"], prim["size"], "squashfs")
    assert os.path.isabs(src.path)


def test_relative_path_becomes_absolute(conformance, monkeypatch):
    images, _ = conformance
    monkeypatch.chdir(images)
    assert open_image("one-group.sif").path == str(images / "one-group.sif")


def test_plain_squashfs(busybox_squashfs):
    src = open_image(str(busybox_squashfs))
    assert (src.kind, src.offset, src.fs_type) == ("squashfs", 0, "squashfs")
    assert src.size == busybox_squashfs.stat().st_size


def test_sandbox(busybox_rootfs):
    src = open_image(str(busybox_rootfs))
    assert (src.kind, src.fs_type, src.path) == ("sandbox", "dir", str(busybox_rootfs))


def test_ext3_primary_partition(damaged):
    """An old image whose primary partition is ext3: reported as such for the runtime to refuse or mount."""
    def make_ext3_primary(data):
        # object 3 of two-groups is the ext3 System partition: make it PrimSys, object 2 System
        for index, part_type in ((1, sif.PART_SYSTEM), (2, sif.PART_PRIMSYS)):
            pos = 4096 + index * sif.DESCRIPTOR_SIZE + 201 + 4
            data[pos:pos + 4] = struct.pack("<i", part_type)
    src = open_image(str(damaged("two-groups.sif", make_ext3_primary)))
    assert (src.fs_type, src.offset, src.size) == ("ext3", 40960, 262144)


# ---------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    assert "not found" in error_of(tmp_path / "nope.sif")


def test_directory_that_is_not_a_rootfs(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "results.csv").write_text("1,2\n")
    assert "not a container root filesystem" in error_of(tmp_path / "data")


def test_non_image_file(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello\n" * 1000)
    assert "not a SIF, squashfs or sandbox image" in error_of(p)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.sif"
    p.write_bytes(b"")
    assert "empty" in error_of(p)


def test_sif_without_system_partition(conformance):
    images, _ = conformance
    for name in ("empty.sif", "one-object-generic-json.sif", "one-object-sbom.sif"):
        assert "no primary system partition" in error_of(images / name)


@pytest.mark.parametrize("cut", [20, 60, 127, 200, 4096 + 100, 32000])
def test_truncated_header_or_descriptors(damaged, cut):
    msg = error_of(damaged("one-group.sif", lambda d: d[:cut]))
    assert "truncated" in msg


def test_truncated_partition(damaged):
    """Cut inside the squashfs partition: the descriptor points beyond the end of the file."""
    msg = error_of(damaged("one-group.sif", lambda d: d[:38000]))
    assert "truncated" in msg and "object 2" in msg


def test_flipped_magic(damaged):
    def flip(d):
        d[32:41] = b"SIF_MAGIX"
    def flip_with_launch(d):
        d[:31] = b"#!/usr/bin/env run-singularity\n"
        d[32:41] = b"XIF_MAGIC"
    assert "not a SIF" in error_of(damaged("one-group.sif", flip))
    assert "corrupted SIF header" in error_of(damaged("one-group.sif", flip_with_launch))


@pytest.mark.parametrize("field,value,words", [
    (5, -3, "descriptor counts"),        # descriptors_free
    (6, 0, "descriptor counts"),         # descriptors_total
    (7, 3, "descriptor table"),          # descriptors_offset inside the header
    (8, 585, "descriptor table"),        # descriptors_size not total * 585
])
def test_corrupted_header_fields(damaged, field, value, words):
    def corrupt(d):
        pos = 64 + (field - 5 + 2) * 8
        d[pos:pos + 8] = struct.pack("<q", value)
    assert words in error_of(damaged("one-group.sif", corrupt))


def test_bad_version(damaged):
    def corrupt(d):
        d[42:45] = b"77\x00"
    assert "unsupported version" in error_of(damaged("one-group.sif", corrupt))


def test_descriptor_offset_beyond_end(damaged):
    def corrupt(d):
        pos = 4096 + sif.DESCRIPTOR_SIZE + 17      # object 2's offset
        d[pos:pos + 8] = struct.pack("<q", 10 ** 9)
    assert "truncated" in error_of(damaged("one-group.sif", corrupt))


def test_negative_descriptor_size(damaged):
    def corrupt(d):
        pos = 4096 + 17 + 8                         # object 1's size
        d[pos:pos + 8] = struct.pack("<q", -5)
    assert "corrupted SIF descriptor 1" in error_of(damaged("one-group.sif", corrupt))


def test_partition_that_is_not_squashfs(damaged):
    def corrupt(d):
        d[36864:36868] = b"XXXX"
    assert "not a squashfs filesystem" in error_of(damaged("one-group.sif", corrupt))


def test_truncated_plain_squashfs(busybox_squashfs, tmp_path):
    p = tmp_path / "cut.sqsh"
    p.write_bytes(busybox_squashfs.read_bytes()[:5000])
    assert "truncated squashfs image" in error_of(p)


def test_errors_are_image_errors_with_exit_code(conformance):
    images, _ = conformance
    with pytest.raises(SifError) as e:
        open_image(str(images / "empty.sif"))
    assert e.value.exit_code == ImageError.exit_code


@pytest.mark.rootless
def test_permission_denied_for_other_user(test_user, install, world_tmp, conformance):
    images, _ = conformance
    private = world_tmp / "private.sif"
    private.write_bytes((images / "one-group.sif").read_bytes())
    private.chmod(0o600)
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from hpccont.errors import ImageError\n"
            "from hpccont.image.source import open_image\n"
            "try:\n    open_image(%r)\nexcept ImageError as e:\n    print(e.one_line())\n"
            % (install["lib"], str(private)))
    r = helpers.as_user(["/opt/hpccont/venv/bin/python", "-c", code])
    assert "permission denied" in r.stdout, r.stderr
