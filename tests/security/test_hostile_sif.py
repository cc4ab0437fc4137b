"""Hostile SIF files, launched end to end: each refused in one line, as the user and as root.

The reader's rules (image/sif.py: every object inside the file, after the descriptor table,
no two overlapping, distinct ids, bounded counts) are unit-tested and fuzzed in
tests/image/test_image_source.py and tests/fuzz/test_fuzz_sif.py; here the damaged files go
through the commands a user runs (exec, inspect, sif list, verify), to show that no path
reaches a mount, the loop device or squashfuse with a bad extent, and that nothing prints a
traceback.  The squashfs with absolute links is tests/security/test_path_tricks.py.
"""
import pytest

import helpers

helpers_repo = str(helpers.REPO)

pytestmark = pytest.mark.rootless


def _table(raw: bytes):
    import sys
    sys.path.insert(0, helpers_repo)
    from hpccont.image import sif
    h = sif.Header.unpack(raw)
    out = []
    for i in range(h.descriptors_total):
        pos = h.descriptors_offset + i * sif.DESCRIPTOR_SIZE
        if raw[pos + 4]:
            out.append((pos, sif.Descriptor.unpack(raw, pos)))
    return sif, h, out


def _patched(raw: bytes, change) -> bytes:
    sif, h, table = _table(raw)
    data = bytearray(raw)
    change(sif, h, table, data)
    return bytes(data)


def _set(data, pos, d):
    data[pos:pos + len(d.pack())] = d.pack()


def _primary(sif, table):
    return next((p, d) for p, d in table if d.data_type == sif.DATA_PARTITION)


def past_end(sif, h, table, data):
    pos, d = _primary(sif, table)
    d.offset = len(data) - 4096
    _set(data, pos, d)


def huge_size(sif, h, table, data):
    pos, d = _primary(sif, table)
    d.size = d.size_with_padding = (1 << 63) - 1 - d.offset
    _set(data, pos, d)


def negative_offset(sif, h, table, data):
    pos, d = _primary(sif, table)
    d.offset = -4096
    _set(data, pos, d)


def over_the_header(sif, h, table, data):
    pos, d = _primary(sif, table)
    d.offset = 0
    _set(data, pos, d)


def overlapping(sif, h, table, data):
    """A second object (the deffile or labels) moved onto the partition's bytes."""
    ppos, part = _primary(sif, table)
    pos, other = next((p, d) for p, d in table if d is not part)
    other.offset, other.size = part.offset + 4096, 4096
    _set(data, pos, other)


def huge_counts(sif, h, table, data):
    h.descriptors_total = h.descriptors_free = 1 << 30
    h.descriptors_size = h.descriptors_total * sif.DESCRIPTOR_SIZE
    data[:sif.HEADER_SIZE] = h.pack()


def short_partition(sif, h, table, data):
    """The declared extent ends inside the squashfs (whose superblock says how many bytes it
    uses): squashfuse, given only an offset, would read on into whatever follows."""
    pos, d = _primary(sif, table)
    d.size = 4096
    _set(data, pos, d)


DAMAGES = [past_end, huge_size, negative_offset, over_the_header, overlapping, huge_counts,
           short_partition]


@pytest.fixture(scope="module")
def damaged(busybox_sif, world_tmp):
    d = world_tmp / "security" / "damaged"
    d.mkdir(parents=True, exist_ok=True)
    raw = busybox_sif.read_bytes()
    out = {}
    for damage in DAMAGES:
        path = d / f"{damage.__name__}.sif"
        path.write_bytes(_patched(raw, damage))
        path.chmod(0o644)
        out[damage.__name__] = path
    return out


def _one_line(r):
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "Traceback" not in out and "internal error" not in out, out
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpccont"), out


@pytest.mark.parametrize("damage", [d.__name__ for d in DAMAGES])
def test_refused_as_user(hpccont_user, damaged, damage):
    """exec refuses every one; the commands that read the structure only (sif list, inspect,
    verify) may list a file whose only fault is inside its squashfs, without a traceback."""
    img = damaged[damage]
    _one_line(hpccont_user("exec", img, "true"))
    for cmd in (["inspect", img], ["sif", "list", img], ["verify", img]):
        r = hpccont_user(*cmd)
        if damage != "short_partition" or r.returncode != 0:
            _one_line(r)


@pytest.mark.root
@pytest.mark.parametrize("damage", [d.__name__ for d in DAMAGES])
def test_refused_as_root(hpccont, damaged, damage):
    before = helpers.mounts_mentioning("squashfs")
    _one_line(hpccont("exec", damaged[damage], "true"))
    assert helpers.mounts_mentioning("squashfs") == before

