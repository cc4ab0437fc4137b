"""docker-archive / oci-archive / oci layout builds from archives the tests assemble."""
import json
import os
import subprocess
from pathlib import Path

import pytest

import helpers
import ocifixtures as ox
from hpccont.errors import BuildError
from hpccont.image.build import oci

ENV = ["PATH=/usr/local/bin:/bin", "GREETING=hello world", "QUOTED=a\"b$HOME"]


@pytest.fixture(scope="module")
def layers():
    return ox.busybox_layers(Path(helpers.BUSYBOX))


def config(layers, **kw):
    args = dict(env=ENV, entrypoint=["/bin/echo", "entry"], cmd=["default", "args"],
                workdir="/opt", labels={"org.example.version": "7"})
    args.update(kw)
    return ox.image_config(diff_ids=[ox.sha(x) for x in layers], **args)


def check_tree(root: Path):
    assert (root / "bin/busybox").is_file()
    assert (root / "opt/app").read_text() == "app v2\n"          # later layer wins
    assert not (root / "etc/removeme").exists()                  # whiteout
    assert sorted(os.listdir(root / "data")) == ["new"]          # opaque dir
    assert (root / "run/pidfile").read_text() == "42"            # via /var/run -> /run, inside
    assert os.readlink(root / "var/run") == "/run"


@pytest.mark.parametrize("kind", ["docker-archive", "oci-archive", "oci"])
def test_unpack_applies_layers_in_order_with_whiteouts(tmp_path, layers, kind):
    src = tmp_path / "img"
    maker = {"docker-archive": ox.docker_archive, "oci-archive": ox.oci_archive,
             "oci": ox.oci_dir}[kind]
    if kind == "oci":
        src.mkdir()
    maker(src, layers, config(layers))
    root = tmp_path / "root"
    root.mkdir()
    cfg = oci.unpack(kind, str(src), str(root))
    check_tree(root)
    assert cfg.entrypoint == ["/bin/echo", "entry"] and cfg.cmd == ["default", "args"]
    assert cfg.labels == {"org.example.version": "7"}


def test_layer_cannot_write_outside_rootfs(tmp_path):
    evil = ox.layer_tar([("escape", "symlink", "/"), ("escape/tmp/pwned-by-layer", "file", "x")])
    arch = ox.docker_archive(tmp_path / "evil.tar", [evil], ox.image_config())
    root = tmp_path / "root"
    root.mkdir()
    oci.unpack("docker-archive", str(arch), str(root))
    assert not Path("/tmp/pwned-by-layer").exists()
    assert (root / "tmp/pwned-by-layer").exists()
    dots = ox.layer_tar([("../outside", "file", "x")])
    arch2 = ox.docker_archive(tmp_path / "dots.tar", [dots], ox.image_config())
    with pytest.raises(BuildError, match="outside the image"):
        oci.unpack("docker-archive", str(arch2), str(root))


@pytest.mark.parametrize("content", [b"", b"not a tar at all" * 10])
def test_bad_archives_are_one_line_errors(tmp_path, content):
    p = tmp_path / "bad.tar"
    p.write_bytes(content)
    with pytest.raises(BuildError):
        oci.unpack("docker-archive", str(p), str(tmp_path))


def test_runscript_and_environment_follow_docker_semantics(tmp_path, layers, root_only):
    arch = ox.docker_archive(tmp_path / "img.tar", layers, config(layers))
    root = tmp_path / "root"
    root.mkdir()
    cfg = oci.unpack("docker-archive", str(arch), str(root))
    script = tmp_path / "runscript"
    script.write_text(cfg.runscript())
    run = lambda *a: subprocess.run(  # noqa: E731
        ["chroot", str(root), "/bin/sh", "-c", cfg.runscript(), "runscript", *a],
        capture_output=True, text=True)
    assert run().stdout == "entry default args\n"              # Entrypoint + Cmd
    assert run("x", "y z").stdout == "entry x y z\n"           # arguments replace Cmd
    env = subprocess.run(["sh", "-c", cfg.environment() + '\nprintf "%s|%s" "$GREETING" "$QUOTED"'],
                         capture_output=True, text=True, env={"HOME": "/h"}).stdout
    assert env == 'hello world|a"b/h'


def test_cli_builds_sandbox_from_docker_archive(hpccont, tmp_path, layers, root_only):
    arch = ox.docker_archive(tmp_path / "img.tar", layers, config(layers))
    out = tmp_path / "sb"
    r = hpccont("build", "--sandbox", out, f"docker-archive:{arch}")
    assert r.returncode == 0, r.stderr
    check_tree(out)
    labels = json.loads((out / ".singularity.d/labels.json").read_text())
    assert labels["org.example.version"] == "7"
    assert "entry" in (out / ".singularity.d/runscript").read_text()
    assert "GREETING" in (out / ".singularity.d/env/10-docker2singularity.sh").read_text()


def test_definition_on_top_of_oci_archive(hpccont, tmp_path, layers, root_only):
    arch = ox.oci_archive(tmp_path / "img.oci.tar", layers, config(layers))
    d = tmp_path / "x.def"
    d.write_text(f"Bootstrap: oci-archive\nFrom: {arch}\n%post\n  cat /opt/app > /opt/copy\n"
                 "%runscript\n  echo mine\n")
    out = tmp_path / "sb"
    r = hpccont("build", "--sandbox", out, d)
    assert r.returncode == 0, r.stderr
    assert (out / "opt/copy").read_text() == "app v2\n"
    assert "echo mine" in (out / ".singularity.d/runscript").read_text()   # %runscript wins
