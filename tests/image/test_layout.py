"""The /.singularity.d layout: planned, applied to a directory, or added while packing."""
import json
import os

from hpccont.image import layout


def test_fills_an_empty_tree_like_apptainer(tmp_path):
    layout.write_layout(str(tmp_path))
    meta = tmp_path / ".singularity.d"
    for name in ("exec", "run", "shell", "start", "test"):
        assert os.access(meta / "actions" / name, os.X_OK)
    for name in ("01-base.sh", "90-environment.sh", "99-base.sh", "99-runtimevars.sh"):
        assert (meta / "env" / name).read_text().startswith("#!/bin/sh\n")
    assert (meta / "runscript").read_text() == layout.DEFAULT_RUNSCRIPT
    assert (meta / "libs").is_dir()
    assert json.loads((meta / "labels.json").read_text()) == {}
    for link, target in layout.SYMLINKS.items():
        assert os.readlink(tmp_path / link) == target
    assert oct((tmp_path / "tmp").stat().st_mode & 0o7777) == "0o1777"


def test_keeps_existing_files_and_replaces_explicit_ones(tmp_path):
    meta = tmp_path / ".singularity.d"
    (meta / "env").mkdir(parents=True)
    (meta / "runscript").write_text("#!/bin/sh\necho mine\n")
    (meta / "test").write_text("#!/bin/sh\necho old test\n")
    (meta / "labels.json").write_text('{"a": "1"}')
    layout.write_layout(str(tmp_path), test="#!/bin/sh\necho new test\n",
                        environment="#!/bin/sh\nexport X=1\n", labels={"b": "2"})
    assert (meta / "runscript").read_text() == "#!/bin/sh\necho mine\n"
    assert (meta / "test").read_text() == "#!/bin/sh\necho new test\n"
    assert (meta / "env/90-environment.sh").read_text() == "#!/bin/sh\nexport X=1\n"
    assert json.loads((meta / "labels.json").read_text()) == {"a": "1", "b": "2"}


def test_second_pass_plans_nothing(tmp_path):
    layout.write_layout(str(tmp_path))
    exists = lambda rel: os.path.lexists(tmp_path / rel)  # noqa: E731
    assert layout.plan_layout(exists, layout.dir_reader(str(tmp_path))) == []


def test_pseudo_definitions(tmp_path):
    entries = [layout.Entry(".singularity.d", "dir", 0o755),
               layout.Entry(".singularity.d/labels.json", "file", 0o644, "{}\n", replace=True),
               layout.Entry("singularity", "symlink", 0o777, ".singularity.d/runscript")]
    pseudo, excludes = layout.pseudo_definitions(entries, str(tmp_path))
    assert pseudo[0] == ".singularity.d d 755 0 0"
    assert pseudo[1].startswith(".singularity.d/labels.json f 644 0 0 cat ")
    assert open(pseudo[1].split("cat ", 1)[1]).read() == "{}\n"
    assert pseudo[2] == "singularity s 777 0 0 .singularity.d/runscript"
    assert excludes == [".singularity.d/labels.json"]


def test_reader_stays_inside_the_root(tmp_path):
    """A symlink in an image pointing at /etc/shadow must read the image's file, not the host's."""
    root = tmp_path / "root"
    (root / ".singularity.d").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/labels").write_text('{"inside": "yes"}')
    (root / ".singularity.d/labels.json").symlink_to("/etc/labels")
    (root / ".singularity.d/runscript").symlink_to("../../../../../../etc/hostname")
    read = layout.dir_reader(str(root))
    assert layout.parse_labels(read(".singularity.d/labels.json")) == {"inside": "yes"}
    assert read(".singularity.d/runscript") is None


def test_metadata_json_documents():
    """Byte for byte what Go's encoding/json writes for Apptainer's pkg/inspect.Metadata."""
    meta = layout.Metadata(labels={"b": "2", "a": "<&>"}, runscript="#!/bin/sh\necho x",
                           deffile="Bootstrap: scratch", environment={"/e/90-environment.sh": "é"})
    assert meta.sif_document() == (
        b'{"data":{"attributes":{"environment":{"/e/90-environment.sh":"\xc3\xa9"},'
        b'"labels":{"a":"\\u003c\\u0026\\u003e","b":"2"},"runscript":"#!/bin/sh\\necho x",'
        b'"deffile":"Bootstrap: scratch"}},"type":"container"}')
    assert meta.to_json().startswith('{\n\t"data": {\n\t\t"attributes": {\n\t\t\t"environment": {')
    assert meta.to_json().endswith('\n\t},\n\t"type": "container"\n}\n')
    assert layout.metadata_from_document(json.loads(meta.sif_document())) == meta
    # the shape older hpccont releases stored is still read
    old = layout.metadata_from_document({"attributes": {"labels": {"a": "b"}, "runscript": "x\n"}})
    assert old.labels == {"a": "b"} and old.runscript == "x"
    assert layout.metadata_from_document({"type": "container"}) is None


def test_pseudo_definitions_with_a_fixed_time(tmp_path):
    entries = [layout.Entry(".singularity.d", "dir", 0o755),
               layout.Entry(".singularity.d/runscript", "file", 0o755, "#!/bin/sh\n"),
               layout.Entry("singularity", "symlink", 0o777, ".singularity.d/runscript")]
    pseudo, _ = layout.pseudo_definitions(entries, str(tmp_path), mtime=1600000000)
    assert pseudo[0] == ".singularity.d D 1600000000 755 0 0"
    assert pseudo[1].startswith(".singularity.d/runscript F 1600000000 755 0 0 cat ")
    assert pseudo[2] == "singularity S 1600000000 777 0 0 .singularity.d/runscript"
