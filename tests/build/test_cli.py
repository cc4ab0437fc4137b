"""hpccont build: command line, offline references, one-line errors, no partial output."""
import hashlib
import os

import pytest


@pytest.mark.parametrize("ref", ["library://alpine", "shub://x/y:1"])
def test_registry_references_name_offline_alternatives(hpccont, tmp_path, ref):
    r = hpccont("build", tmp_path / "o.sif", ref)
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1
    assert "needs network registry access" in r.stderr
    for alt in ("docker-archive:", "oci-archive:", "localimage"):
        assert alt in r.stderr
    assert not (tmp_path / "o.sif").exists()


@pytest.mark.parametrize("args,fragment", [
    (["--no-such-option", "o", "s"], "unrecognized arguments"),
    (["only-one"], "required"),
    (["--section", "bogus", "o", "s"], "unknown section"),
    (["--build-arg", "novalue", "o", "s"], "expected KEY=VALUE"),
    (["--mksquashfs-args", "'unclosed", "o", "s"], "--mksquashfs-args"),
    (["--tmpdir", "/nonexistent-dir", "o", "/"], "--tmpdir"),
])
def test_bad_options_are_one_line(hpccont, tmp_path, args, fragment):
    r = hpccont("build", *args, cwd=tmp_path)
    assert r.returncode == 2 or r.returncode == 5, r
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert fragment in r.stderr and "Traceback" not in r.stderr


def test_missing_source_and_existing_output(hpccont, tmp_path, busybox_rootfs):
    r = hpccont("build", tmp_path / "o.sif", tmp_path / "nothing-here")
    assert r.returncode == 5 and "no such file" in r.stderr
    out = tmp_path / "exists.sif"
    out.write_text("keep me")
    r = hpccont("build", out, busybox_rootfs)
    assert r.returncode != 0 and "--force" in r.stderr
    assert out.read_text() == "keep me"


def test_definition_syntax_error_names_file_line(hpccont, tmp_path):
    d = tmp_path / "bad.def"
    d.write_text("Bootstrap: busybox\n\n%post\n  true\n%bogus\n")
    r = hpccont("build", tmp_path / "o.sif", d)
    assert r.returncode == 5
    assert f"{d}:5: unknown section %bogus" in r.stderr
    assert not any(p.name.startswith((".o.sif", "o.sif")) for p in tmp_path.iterdir())


def test_build_from_sandbox_dir_and_force(hpccont, tmp_path, busybox_rootfs):
    out = tmp_path / "img.sif"
    assert hpccont("build", out, busybox_rootfs).returncode == 0
    first = out.read_bytes()
    r = hpccont("build", "--force", out, busybox_rootfs)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:32].startswith(b"#!/usr/bin/env run-singularity")
    assert hashlib.sha256(first).digest() == hashlib.sha256(out.read_bytes()).digest()
    assert "convert" in r.stderr                      # progress lines (not a terminal: plain)


def test_build_arg_file(hpccont, tmp_path):
    d = tmp_path / "a.def"
    d.write_text("%arguments\n  WHO=nobody\nBootstrap: busybox\n%post\n  echo {{ WHO }} > /who\n")
    f = tmp_path / "args"
    f.write_text("# comment\nWHO=file\n")
    out = tmp_path / "sb"
    r = hpccont("build", "--sandbox", "--build-arg-file", f, out, d)
    assert r.returncode == 0, r.stderr
    assert (out / "who").read_text() == "file\n"
    r = hpccont("build", "--sandbox", "--force", "--build-arg-file", f, "--build-arg", "WHO=cli",
                out, d)
    assert r.returncode == 0, r.stderr
    assert (out / "who").read_text() == "cli\n"


SQUASHFS_COMPRESSORS = {1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}


def _sif_compression(path) -> str:
    """The compressor id in the squashfs superblock (u16 at byte 20) of the SIF's partition."""
    from hpccont.image import sif
    offset = next(d.offset for d in sif.read_sif(str(path)).descriptors
                  if d.data_type == sif.DATA_PARTITION)
    with open(path, "rb") as f:
        f.seek(offset + 20)
        return SQUASHFS_COMPRESSORS[int.from_bytes(f.read(2), "little")]


@pytest.mark.parametrize("config,args,expected", [
    ("", [], "zstd"),                                          # the shipped default
    ("build:\n  compression: lz4\n", [], "lz4"),
    ("build:\n  compression: gzip\n  compression_level: 1\n", [], "gzip"),
    ("", ["--mksquashfs-args", "-comp gzip"], "gzip"),          # one build overrides the site
])
def test_compression_follows_site_config(hpccont, tmp_path, busybox_rootfs, config, args,
                                         expected):
    cfg = tmp_path / "hpccont.yaml"
    cfg.write_text(config)
    out = tmp_path / "o.sif"
    r = hpccont("build", *args, out, busybox_rootfs, env={"HPCCONT_CONFIG": str(cfg)})
    assert r.returncode == 0, r.stderr
    assert _sif_compression(out) == expected


@pytest.mark.parametrize("config,fragment", [
    ("build:\n  compression: rar\n", "build.compression must be one of"),
    ("build:\n  compression_level: fast\n", "build.compression_level must be a whole number"),
    ("build:\n  compression_level: 99\n", "out of range for zstd (1-22)"),
])
def test_bad_compression_settings_are_one_line(hpccont, tmp_path, busybox_rootfs, config,
                                               fragment):
    cfg = tmp_path / "hpccont.yaml"
    cfg.write_text(config)
    r = hpccont("build", tmp_path / "o.sif", busybox_rootfs, env={"HPCCONT_CONFIG": str(cfg)})
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert fragment in r.stderr
    assert not (tmp_path / "o.sif").exists()
