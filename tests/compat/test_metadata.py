"""Image metadata both ways: a SIF laid out as Apptainer's build writes one (made here from
Apptainer's documented layout: Def.FILE, JSON.Generic "inspect-metadata.json" holding
``json.Marshal`` of pkg/inspect.Metadata, the squashfs partition) is read by hpccont exactly as
``apptainer inspect`` shows it, and hpccont's own SIFs carry the object byte for byte as
Apptainer's build would write it for the same tree.  The reference SIFs of the format's test
suite are read and rebuilt the same way."""
import json
from pathlib import Path

import pytest

import helpers
from hpccont.image import sif

CONFORMANCE = helpers.REPO.parent / "shared" / "sif-conformance" / "images"

# What Apptainer 1.3's build stores for the tree made by apptainer_tree() (written out by hand
# from internal/pkg/build/metadata.go and pkg/inspect: compact, struct order apps, environment,
# labels, runscript, test, helpfile, deffile, startscript; maps sorted; texts without their
# trailing newlines; <, > and & escaped).
APPTAINER_OBJECT = (
    '{"data":{"attributes":{"apps":{"hello":{"environment":{"/scif/apps/hello/scif/env/'
    '90-environment.sh":"export HELLO=1"},"labels":{"app":"hello"},"runscript":"#!/bin/sh\\n'
    'echo hello app","helpfile":"hello help"}},"environment":{"/.singularity.d/env/'
    '10-docker2singularity.sh":"#!/bin/sh\\nexport PATH=\\"/usr/local/bin:/usr/bin:/bin\\"",'
    '"/.singularity.d/env/90-environment.sh":"#!/bin/sh\\n\\nexport FROM_IMAGE=yes"},'
    '"labels":{"maintainer":"a \\u003cb@c\\u003e \\u0026 d","org.label-schema.schema-version":'
    '"1.0"},"runscript":"#!/bin/sh\\n\\necho \\"runscript: $*\\"","test":"#!/bin/sh\\n\\ntrue",'
    '"helpfile":"Image help.","deffile":"Bootstrap: busybox\\n\\n%runscript\\n    echo '
    '\\"runscript: $*\\"","startscript":"#!/bin/sh"}},"type":"container"}')

DEFFILE = 'Bootstrap: busybox\n\n%runscript\n    echo "runscript: $*"\n'


def apptainer_tree(root: Path) -> Path:
    """A busybox tree with the /.singularity.d files Apptainer's build writes."""
    helpers.make_busybox_rootfs(root)
    sd = root / ".singularity.d"
    for name in ("runscript", "test"):
        (sd / name).unlink()
    (sd / "runscript").write_text('#!/bin/sh\n\necho "runscript: $*"\n')
    (sd / "test").write_text("#!/bin/sh\n\ntrue\n")
    (sd / "startscript").write_text("#!/bin/sh\n")
    (sd / "runscript.help").write_text("Image help.\n")
    (sd / "Singularity").write_text(DEFFILE)
    (sd / "env/90-environment.sh").write_text("#!/bin/sh\n\nexport FROM_IMAGE=yes\n")
    (sd / "env/10-docker2singularity.sh").write_text(
        '#!/bin/sh\nexport PATH="/usr/local/bin:/usr/bin:/bin"\n')
    (sd / "env/01-base.sh").write_text("#!/bin/sh\n# not shown by inspect\n")
    # json.MarshalIndent(labels, "", "\t"), no newline at the end
    (sd / "labels.json").write_text('{\n\t"maintainer": "a \\u003cb@c\\u003e \\u0026 d",\n'
                                    '\t"org.label-schema.schema-version": "1.0"\n}')
    for f in ("runscript", "test", "startscript", "env/90-environment.sh",
              "env/10-docker2singularity.sh"):
        (sd / f).chmod(0o755)
    app = root / "scif/apps/hello/scif"
    (app / "env").mkdir(parents=True)
    (app / "runscript").write_text("#!/bin/sh\necho hello app\n")
    (app / "runscript").chmod(0o755)
    (app / "runscript.help").write_text("hello help\n")
    (app / "labels.json").write_text('{\n\t"app": "hello"\n}')
    (app / "env/90-environment.sh").write_text("export HELLO=1\n")
    return root


@pytest.fixture(scope="module")
def apptainer_sif(tmp_path_factory):
    """A SIF as `apptainer build` writes it, assembled here object by object."""
    base = tmp_path_factory.mktemp("apptainer-sif")
    root = apptainer_tree(base / "rootfs")
    fs = helpers.mksquashfs(root, base / "fs.sqsh")
    out = base / "apptainer.sif"
    sif.create_sif(str(out), [
        sif.ObjectInput(sif.DATA_DEFFILE, data=DEFFILE.encode()),
        sif.ObjectInput(sif.DATA_GENERIC_JSON, data=APPTAINER_OBJECT.encode(),
                        name="inspect-metadata.json"),
        sif.ObjectInput(sif.DATA_PARTITION, path=str(fs),
                        extra=sif.partition_extra(sif.FS_SQUASH, sif.PART_PRIMSYS, sif.host_arch())),
    ])
    out.chmod(0o755)
    return {"sif": out, "root": root, "squashfs": fs}


def test_apptainer_object_is_valid_json_of_its_shape():
    doc = json.loads(APPTAINER_OBJECT)
    assert list(doc) == ["data", "type"] and doc["type"] == "container"
    assert doc["data"]["attributes"]["labels"]["maintainer"] == "a <b@c> & d"


@pytest.mark.parametrize("kind", ["sif", "squashfs", "root"])
def test_inspect_reads_apptainer_images(hpccont, apptainer_sif, kind):
    """apptainer inspect's text: labels; -r; -e (10-docker* and 9*-environment only); -d;
    --list-apps; --app hello -r; the same from the SIF object, the squashfs and the tree."""
    img = apptainer_sif[kind]
    r = hpccont("inspect", img)
    assert r.stdout == "maintainer: a <b@c> & d\norg.label-schema.schema-version: 1.0\n", r.stderr
    assert hpccont("inspect", "-r", img).stdout == '#!/bin/sh\n\necho "runscript: $*"\n'
    assert hpccont("inspect", "-e", img).stdout == (
        '=== /.singularity.d/env/10-docker2singularity.sh ===\n#!/bin/sh\n'
        'export PATH="/usr/local/bin:/usr/bin:/bin"\n\n'
        '=== /.singularity.d/env/90-environment.sh ===\n#!/bin/sh\n\nexport FROM_IMAGE=yes\n\n')
    assert hpccont("inspect", "-d", img).stdout == DEFFILE
    assert hpccont("inspect", "-H", "-t", img).stdout == "#!/bin/sh\n\ntrue\nImage help.\n"
    assert hpccont("inspect", "--list-apps", img).stdout == "hello\n"
    assert hpccont("inspect", "--app", "hello", "-r", img).stdout == "#!/bin/sh\necho hello app\n"
    assert hpccont("run-help", img).stdout == "Image help.\n"
    assert hpccont("run-help", "--app", "hello", img).stdout == "hello help\n"


def test_inspect_json_as_apptainer_prints_it(hpccont, apptainer_sif):
    """--json is MarshalIndent with a tab of the chosen attributes; --all of everything."""
    r = hpccont("inspect", "--json", "-l", apptainer_sif["sif"])
    assert r.stdout == ('{\n\t"data": {\n\t\t"attributes": {\n\t\t\t"labels": {\n'
                        '\t\t\t\t"maintainer": "a \\u003cb@c\\u003e \\u0026 d",\n'
                        '\t\t\t\t"org.label-schema.schema-version": "1.0"\n\t\t\t}\n\t\t}\n\t},\n'
                        '\t"type": "container"\n}\n')
    full = hpccont("inspect", "--all", apptainer_sif["sif"]).stdout
    assert json.loads(full) == json.loads(APPTAINER_OBJECT)
    # the tree gives the same document as the object Apptainer stored
    assert json.loads(hpccont("inspect", "--all", apptainer_sif["root"]).stdout) == \
        json.loads(APPTAINER_OBJECT)


def test_hpccont_writes_what_apptainer_would(hpccont, apptainer_sif, tmp_path):
    """Building a SIF from the same tree stores Apptainer's object, byte for byte (the labels
    hpccont's build adds aside), so `apptainer inspect` reads it."""
    out = tmp_path / "rebuilt.sif"
    r = hpccont("build", out, apptainer_sif["root"])
    assert r.returncode == 0, r.stderr
    image = sif.read_sif(str(out))
    obj = next(d for d in image.descriptors if d.name == "inspect-metadata.json")
    raw = image.read_object(obj).decode()
    doc = json.loads(raw)
    labels = doc["data"]["attributes"]["labels"]
    added = {k for k in labels if k not in ("maintainer", "org.label-schema.schema-version")}
    assert all(k.startswith("org.label-schema.") for k in added)
    expected = json.loads(APPTAINER_OBJECT)
    expected["data"]["attributes"]["labels"] = labels
    expected["data"]["attributes"]["deffile"] = doc["data"]["attributes"]["deffile"]
    from hpccont.image.layout import go_json
    assert raw == go_json(expected)                 # the encoding, byte for byte
    # and the object for the original tree, without hpccont's labels, is the literal above
    assert raw.startswith(APPTAINER_OBJECT.split('"labels"')[0])


def test_old_hpccont_objects_are_still_read(hpccont, apptainer_sif, tmp_path):
    """The bare {"attributes": ...} document earlier hpccont releases stored."""
    old = json.dumps({"attributes": {"labels": {"era": "old"}, "runscript": "#!/bin/sh\necho old\n"}})
    out = tmp_path / "old.sif"
    sif.create_sif(str(out), [
        sif.ObjectInput(sif.DATA_DEFFILE, data=b"bootstrap: localimage\n"),
        sif.ObjectInput(sif.DATA_GENERIC_JSON, data=old.encode(), name="inspect-metadata.json"),
        sif.ObjectInput(sif.DATA_PARTITION, path=str(apptainer_sif["squashfs"]),
                        extra=sif.partition_extra(sif.FS_SQUASH, sif.PART_PRIMSYS, sif.host_arch())),
    ])
    assert hpccont("inspect", out).stdout == "era: old\n"
    assert hpccont("inspect", "-r", out).stdout == "#!/bin/sh\necho old\n"
    assert hpccont("inspect", "-d", out).stdout == "bootstrap: localimage\n"


def test_singularity2_image(hpccont, tmp_path):
    """Singularity 2.4 "simg": the launch line, then the squashfs; /singularity runscript."""
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    import shutil
    shutil.copy2(helpers.BUSYBOX, root / "bin/busybox")
    (root / "bin/sh").symlink_to("busybox")
    (root / "singularity").write_text("#!/bin/sh\necho legacy\n")
    (root / "environment").write_text("export OLD=1\n")
    fs = helpers.mksquashfs(root, tmp_path / "fs.sqsh")
    img = tmp_path / "old.simg"
    img.write_bytes(b"#!/usr/bin/env run-singularity\n" + fs.read_bytes())
    assert hpccont("inspect", "-r", img).stdout == "#!/bin/sh\necho legacy\n"
    assert "=== /environment ===\nexport OLD=1\n" in hpccont("inspect", "-e", img).stdout
    r = hpccont("exec", img, "/bin/sh", "-c", "echo inside")
    assert (r.returncode, r.stdout) == (0, "inside\n"), r.stderr


def test_reference_sifs(hpccont, tmp_path):
    if not CONFORMANCE.is_dir():
        pytest.skip(f"SIF conformance data not found at {CONFORMANCE}")
    # one-group.sif: an (empty) squashfs and no metadata object: empty metadata, as Apptainer
    r = hpccont("inspect", "--json", CONFORMANCE / "one-group.sif")
    assert r.stdout == '{\n\t"data": {\n\t\t"attributes": {}\n\t},\n\t"type": "container"\n}\n'
    # a JSON.Generic object of another name is not the metadata
    data_json = sif.read_sif(str(CONFORMANCE / "one-object-generic-json.sif"))
    assert [d.name for d in data_json.descriptors] == ["data.json"]
    r = hpccont("inspect", CONFORMANCE / "one-object-generic-json.sif")
    assert r.returncode == 4 and "no primary system partition" in r.stderr
    # rebuilt by hpccont: Apptainer's object, readable back
    out = tmp_path / "og.sif"
    assert hpccont("build", out, CONFORMANCE / "one-group.sif").returncode == 0
    image = sif.read_sif(str(out))
    obj = next(d for d in image.descriptors if d.name == "inspect-metadata.json")
    doc = json.loads(image.read_object(obj))
    assert list(doc) == ["data", "type"] and doc["type"] == "container"
    attrs = doc["data"]["attributes"]
    assert attrs["deffile"] == f"bootstrap: localimage\nfrom: {CONFORMANCE / 'one-group.sif'}"
    assert list(attrs) == [k for k in ("apps", "environment", "labels", "runscript", "test",
                                       "helpfile", "deffile", "startscript") if k in attrs]
    shown = json.loads(hpccont("inspect", "--all", out).stdout)
    assert shown == doc
