"""image_from_source / `hpccont build OUT SRC`: SIF and sandbox images from other images."""
import json
import os
import stat
import subprocess

import pytest

from hpccont.errors import BuildError, ImageError
from hpccont.image import layout, sif, squashfs
from hpccont.image.convert import INSPECT_METADATA_NAME, image_from_source
from hpccont.image.source import open_image

import helpers


@pytest.fixture
def rootfs(tmp_path):
    return helpers.make_busybox_rootfs(tmp_path / "rootfs")


def unsquash_cat(image: str, rel: str) -> bytes:
    src = open_image(image)
    data = squashfs.cat_file(src.path, rel, offset=src.offset)
    assert data is not None, f"{rel} missing from {image}"
    return data


def test_sif_from_sandbox_is_what_apptainer_writes(rootfs, tmp_path):
    out = image_from_source(str(tmp_path / "img.sif"), str(rootfs), labels={"team": "hpc"})
    image = sif.read_sif(out)
    h = image.header
    assert h.launch_script == "#!/usr/bin/env run-singularity\n"
    assert (h.version, h.descriptors_total, h.arch) == ("01", 48, sif.host_arch())
    assert [(d.type_label, d.group_id, d.name) for d in image.descriptors] == [
        ("Def.FILE", 1, ""), ("JSON.Generic", 1, INSPECT_METADATA_NAME), ("FS", 1, "")]
    assert all(d.offset % 4096 == 0 for d in image.descriptors)
    prim = image.primary_partition()
    assert (prim.fs_type, prim.part_arch, prim.id) == (sif.FS_SQUASH, sif.host_arch(), 3)
    assert image.read_object(image.descriptors[0]) == f"bootstrap: localimage\nfrom: {rootfs}\n".encode()
    doc = json.loads(image.read_object(image.descriptors[1]))
    assert doc["type"] == "container"     # Apptainer's inspect.Metadata shape
    attrs = doc["data"]["attributes"]
    assert attrs["labels"]["team"] == "hpc"
    assert attrs["labels"]["org.label-schema.name"] == "busybox-test"
    assert attrs["runscript"] == helpers.RUNSCRIPT.rstrip("\n")   # stored trimmed, as Apptainer
    assert stat.S_IMODE(os.stat(out).st_mode) & 0o111


def test_sif_partition_holds_the_layout(rootfs, tmp_path):
    out = image_from_source(str(tmp_path / "img.sif"), str(rootfs), labels={"team": "hpc"})
    # the image's own files are kept...
    assert unsquash_cat(out, ".singularity.d/runscript").decode() == helpers.RUNSCRIPT
    assert b"IMAGE_VAR=from-image" in unsquash_cat(out, ".singularity.d/env/90-environment.sh")
    # ...what it lacked is added, Apptainer's way
    assert b'exec "$@"' in unsquash_cat(out, ".singularity.d/actions/exec")
    assert b"/.singularity.d/runscript" in unsquash_cat(out, ".singularity.d/actions/run")
    assert b"/.singularity.d/libs" in unsquash_cat(out, ".singularity.d/env/99-base.sh")
    labels = json.loads(unsquash_cat(out, ".singularity.d/labels.json"))
    assert labels["team"] == "hpc" and labels["org.label-schema.name"] == "busybox-test"
    listing = subprocess.run(["unsquashfs", "-lls", "-d", "", "-o", str(open_image(out).offset), out],
                             capture_output=True, text=True).stdout
    assert "/apptainer -> .singularity.d/runscript" in listing
    assert "/singularity -> .singularity.d/runscript" in listing
    assert "/.exec -> .singularity.d/actions/exec" in listing


def test_source_sandbox_is_not_modified(rootfs, tmp_path):
    before = sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*"))
    labels_before = (rootfs / ".singularity.d/labels.json").read_text()
    image_from_source(str(tmp_path / "img.sif"), str(rootfs), labels={"x": "1"})
    assert sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*")) == before
    assert (rootfs / ".singularity.d/labels.json").read_text() == labels_before


def test_round_trip_sif_sandbox_sif(rootfs, tmp_path):
    sif1 = image_from_source(str(tmp_path / "a.sif"), str(rootfs))
    box = image_from_source(str(tmp_path / "box"), sif1, sandbox=True)
    assert open_image(box).kind == "sandbox"
    assert (tmp_path / "box/.singularity.d/runscript").read_text() == helpers.RUNSCRIPT
    assert os.readlink(tmp_path / "box/singularity") == ".singularity.d/runscript"
    assert stat.S_IMODE((tmp_path / "box/tmp").stat().st_mode) == 0o1777
    assert (tmp_path / "box/bin/busybox").read_bytes() == (rootfs / "bin/busybox").read_bytes()
    sif2 = image_from_source(str(tmp_path / "b.sif"), box)
    meta1 = layout.image_metadata(open_image(sif1))
    meta2 = layout.image_metadata(open_image(sif2))
    assert meta1.runscript == meta2.runscript == helpers.RUNSCRIPT.rstrip("\n")
    assert meta2.labels["org.label-schema.name"] == "busybox-test"


def test_sif_from_plain_squashfs(busybox_squashfs, tmp_path):
    out = image_from_source(str(tmp_path / "s.sif"), str(busybox_squashfs), mksquashfs_args=["-comp", "xz"])
    src = open_image(out)
    assert src.kind == "sif"
    with open(out, "rb") as f:
        f.seek(src.offset + 20)
        assert int.from_bytes(f.read(2), "little") == 4       # squashfs compression id: xz
    with open(helpers.BUSYBOX, "rb") as f:
        assert unsquash_cat(out, "bin/busybox") == f.read()


def test_compression_choice_and_bad_args(rootfs, tmp_path):
    out = image_from_source(str(tmp_path / "z.sif"), str(rootfs), comp="zstd")
    with open(out, "rb") as f:
        f.seek(open_image(out).offset + 20)
        assert int.from_bytes(f.read(2), "little") == 6       # zstd
    with pytest.raises(BuildError, match="unknown squashfs compression"):
        image_from_source(str(tmp_path / "q.sif"), str(rootfs), comp="rar")
    with pytest.raises(BuildError, match="mksquashfs failed"):
        image_from_source(str(tmp_path / "q.sif"), str(rootfs), mksquashfs_args=["-no-such-option"])
    assert not (tmp_path / "q.sif").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hpccont-build-")]


def test_output_rules(rootfs, tmp_path):
    out = tmp_path / "o.sif"
    out.write_text("precious")
    with pytest.raises(BuildError, match="already exists"):
        image_from_source(str(out), str(rootfs))
    assert out.read_text() == "precious"
    image_from_source(str(out), str(rootfs), force=True)
    assert sif.read_sif(str(out)).primary_partition() is not None
    with pytest.raises(BuildError, match="same image"):
        image_from_source(str(out), str(out), force=True)
    with pytest.raises(BuildError, match="inside the source"):
        image_from_source(str(rootfs / "x.sif"), str(rootfs))
    with pytest.raises(BuildError, match="does not exist"):
        image_from_source(str(tmp_path / "no/dir/x.sif"), str(rootfs))
    with pytest.raises(ImageError, match="not found"):
        image_from_source(str(tmp_path / "y.sif"), str(tmp_path / "missing"))


def test_deffile_text_and_sif_object(rootfs, tmp_path):
    text = "Bootstrap: localimage\nFrom: x\n\n%runscript\n    echo hi\n"
    out = image_from_source(str(tmp_path / "d.sif"), str(rootfs), deffile_text=text)
    image = sif.read_sif(out)
    assert image.read_object(image.find(sif.DATA_DEFFILE)[0]).decode() == text
    assert unsquash_cat(out, ".singularity.d/Singularity").decode() == text


def test_built_sif_runs_through_its_launch_line(rootfs, tmp_path):
    """`./img.sif a b` makes the kernel run `/usr/bin/env run-singularity ./img.sif a b`."""
    out = image_from_source(str(tmp_path / "img.sif"), str(rootfs))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    stub = bindir / "run-singularity"
    stub.write_text('#!/bin/sh\necho "launched: $*"\n')
    stub.chmod(0o755)
    r = subprocess.run(["./img.sif", "a", "b c"], cwd=tmp_path, capture_output=True, text=True,
                       env={"PATH": f"{bindir}:/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout == "launched: ./img.sif a b c\n"
    assert out


def test_built_sif_is_executable_end_to_end(rootfs, tmp_path, install):
    """The real entry point: run-singularity -> hpccont run -> the image's runscript."""
    out = image_from_source(str(tmp_path / "img.sif"), str(rootfs))
    env = {"PATH": f"{install['bin']}:/usr/bin:/bin", "HOME": str(tmp_path), "USER": "root"}
    r = subprocess.run(["./img.sif", "x", "y"], cwd=tmp_path, capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("runscript args: x y")
    assert out


def test_build_command_converts_between_kinds(hpccont, rootfs, tmp_path):
    a = tmp_path / "a.sif"
    r = hpccont("build", a, rootfs)
    assert r.returncode == 0, r.stderr
    r = hpccont("build", "--sandbox", tmp_path / "box", a)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "box/.singularity.d/runscript").read_text() == helpers.RUNSCRIPT
    r = hpccont("build", a, tmp_path / "box")
    assert r.returncode != 0 and "already exists" in r.stderr and "Traceback" not in r.stderr
    r = hpccont("build", "--force", a, tmp_path / "box")
    assert r.returncode == 0, r.stderr
    assert sif.read_sif(str(a)).primary_partition() is not None


@pytest.mark.rootless
def test_build_as_unprivileged_user_packs_all_root(hpccont_user, shared_tmp):
    root = helpers.make_busybox_rootfs(shared_tmp / "userroot")
    subprocess.run(["chown", "-R", helpers.TEST_USER, str(root)], check=True)
    out = shared_tmp / "user.sif"
    r = hpccont_user("build", out, root)
    assert r.returncode == 0, r.stderr
    assert os.stat(out).st_uid != 0 and os.access(out, os.X_OK)
    src = open_image(str(out))
    listing = subprocess.run(["unsquashfs", "-lln", "-d", "", "-o", str(src.offset), str(out)],
                             capture_output=True, text=True).stdout
    owners = {line.split()[1] for line in listing.splitlines() if line.strip()}
    assert owners == {"0/0"}
