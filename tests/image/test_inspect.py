"""`hpccont inspect`: metadata of SIF, squashfs and sandbox images, read without mounting."""
import json
import shutil

import pytest

from hpccont.image import layout, sif
from hpccont.image.convert import image_from_source

import helpers

HELP = "Usage: run it with files\n"
TEST_SCRIPT = "#!/bin/sh\necho test-ok\nexit 0\n"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """One rootfs as a sandbox, a plain squashfs (no SIF metadata) and a SIF."""
    base = tmp_path_factory.mktemp("inspect")
    root = helpers.make_busybox_rootfs(base / "rootfs")
    (root / ".singularity.d/runscript.help").write_text(HELP)
    layout.write_layout(str(root), deffile="Bootstrap: scratch\n", labels={"owner": "hpc team"})
    sqsh = helpers.mksquashfs(root, base / "img.sqsh")
    sif_path = image_from_source(str(base / "img.sif"), str(root),
                                 deffile_text="Bootstrap: localimage\nFrom: rootfs\n")
    return {"sandbox": root, "squashfs": sqsh, "sif": sif_path}


@pytest.mark.parametrize("kind", ["sandbox", "squashfs", "sif"])
def test_labels_default_text(hpccont, images, kind):
    r = hpccont("inspect", images[kind])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "org.label-schema.name: busybox-test" in lines, r.stdout
    assert "owner: hpc team" in lines
    assert lines == sorted(lines)


@pytest.mark.parametrize("kind", ["sandbox", "squashfs", "sif"])
def test_scripts(hpccont, images, kind):
    assert hpccont("inspect", "--runscript", images[kind]).stdout == helpers.RUNSCRIPT
    assert hpccont("inspect", "--test", images[kind]).stdout == TEST_SCRIPT
    assert hpccont("inspect", "--helpfile", images[kind]).stdout == HELP
    assert hpccont("inspect", "-r", "-t", images[kind]).stdout == helpers.RUNSCRIPT + TEST_SCRIPT


@pytest.mark.parametrize("kind", ["sandbox", "squashfs", "sif"])
def test_environment(hpccont, images, kind):
    out = hpccont("inspect", "--environment", images[kind]).stdout
    assert "=== /.singularity.d/env/90-environment.sh ===\n#!/bin/sh\nexport IMAGE_VAR=from-image\n" in out
    headers = [ln for ln in out.splitlines() if ln.startswith("=== ")]
    # Apptainer's inspect shows 10-docker*.sh and 9*-environment.sh only, not 01-base.sh etc.
    assert headers == ["=== /.singularity.d/env/90-environment.sh ==="]


def test_deffile(hpccont, images):
    assert hpccont("inspect", "--deffile", images["sif"]).stdout == "Bootstrap: localimage\nFrom: rootfs\n"
    assert hpccont("inspect", "--deffile", images["sandbox"]).stdout == "Bootstrap: scratch\n"
    assert hpccont("inspect", "--deffile", images["squashfs"]).stdout == "Bootstrap: scratch\n"


@pytest.mark.parametrize("kind", ["sandbox", "squashfs", "sif"])
def test_json(hpccont, images, kind):
    r = hpccont("inspect", "--json", "--labels", "--runscript", "--environment", images[kind])
    doc = json.loads(r.stdout)
    assert doc["type"] == "container"
    attrs = doc["data"]["attributes"]
    assert set(attrs) == {"labels", "runscript", "environment"}
    assert attrs["labels"]["owner"] == "hpc team"
    assert attrs["runscript"] == helpers.RUNSCRIPT.rstrip("\n")
    assert "IMAGE_VAR" in attrs["environment"]["/.singularity.d/env/90-environment.sh"]
    full = json.loads(hpccont("inspect", "--json", "--all", images[kind]).stdout)["data"]["attributes"]
    assert {"labels", "runscript", "test", "helpfile", "environment", "deffile"} <= set(full)


def test_sif_without_metadata_object_reads_the_partition(images, tmp_path):
    """An image whose SIF carries no inspect metadata (older Apptainer): read from squashfs."""
    src = sif.read_sif(str(images["sif"]))
    part = src.primary_partition()
    fs = tmp_path / "fs.sqsh"
    fs.write_bytes(src.read_object(part))
    bare = tmp_path / "bare.sif"
    sif.create_sif(str(bare), [sif.ObjectInput(sif.DATA_PARTITION, path=str(fs), extra=part.extra)])
    from hpccont.image.source import open_image
    meta = layout.image_metadata(open_image(str(bare)))
    assert meta.runscript == helpers.RUNSCRIPT.rstrip("\n") and meta.helpfile == HELP.rstrip("\n")
    assert meta.labels["owner"] == "hpc team"


def test_bad_input(hpccont, tmp_path, images):
    r = hpccont("inspect", tmp_path / "missing.sif")
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "not found" in r.stderr
    r = hpccont("inspect", "--frob", images["sif"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    cut = tmp_path / "cut.sif"
    shutil.copyfile(images["sif"], cut)
    with open(cut, "r+b") as f:
        f.truncate(40000)
    r = hpccont("inspect", cut)
    assert r.returncode != 0 and "truncated" in r.stderr and "Traceback" not in r.stderr
