"""Built images keep their Python bytecode valid.

Reproducible builds fix file times; if every time became SOURCE_DATE_EPOCH, each timestamp
pyc would stop matching its source and Python would compile every module again at every start
("bytecode is stale" under ``python3 -v``).  Each way of making an image is checked here: a
sandbox converted to a SIF or a sandbox, a definition file (whose %setup and %files write
modules), docker/OCI archives (layer times from the tar headers), SIF and squashfs
conversion; with and without SOURCE_DATE_EPOCH.  The images are unpacked and every pyc is
validated as the import system does, and /usr/bin/python3 -v imports the modules from them.
"""
import hashlib
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

import helpers
import ocifixtures as ox
import pyctree as pt
from hpccont.image import times
from hpccont.image.source import open_image

pytestmark = pytest.mark.root

SDE_ENV = {"SOURCE_DATE_EPOCH": str(pt.SDE)}


@pytest.fixture(autouse=True)
def no_epoch(monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


@pytest.fixture(scope="module")
def pytree(tmp_path_factory):
    """A busybox sandbox with add_package's modules (made once, never modified)."""
    root = helpers.make_busybox_rootfs(tmp_path_factory.mktemp("pytree") / "rootfs")
    pt.add_package(root)
    return root


def unpack(image: Path, dest: Path) -> Path:
    src = open_image(str(image))
    subprocess.run(["unsquashfs", "-o", str(src.offset), "-d", str(dest), "-n", "-q", src.path],
                   check=True, stdout=subprocess.DEVNULL)
    return dest


def image_tree(out: Path, tmp_path: Path) -> Path:
    return out if out.is_dir() else unpack(out, tmp_path / f"unpacked-{out.name}")


def mtime(root: Path, rel: str) -> int:
    return int(os.lstat(root / pt.APP / rel).st_mtime)


def assert_imports_from_bytecode(root: Path) -> None:
    verbose = pt.python_verbose(root)
    assert not pt.recompiled(verbose), pt.recompiled(verbose)
    assert verbose.count(" matches ") >= 5


def build(hpccont, *args, env=None):
    r = hpccont("build", "-q", *map(str, args), env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


# ---------------------------------------------------------------- sandbox conversion
@pytest.mark.parametrize("epoch", [False, True], ids=["no-epoch", "epoch"])
@pytest.mark.parametrize("sandbox", [False, True], ids=["sif", "sandbox"])
def test_converted_sandbox_keeps_pycs_valid(hpccont, pytree, tmp_path, epoch, sandbox):
    out = tmp_path / ("out" if sandbox else "out.sif")
    build(hpccont, *(["--sandbox"] if sandbox else []), out, pytree,
          env=SDE_ENV if epoch else None)
    root = image_tree(out, tmp_path)
    pt.assert_package_valid(root)
    assert_imports_from_bytecode(root)
    assert mtime(root, "oldmod.py") == pt.OLD                 # times files came with stay
    assert mtime(root, "recentmod.py") == (pt.SDE if epoch else pt.RECENT)
    assert (root / pt.APP / "linkmod.py").is_symlink()
    assert int(os.stat(root / "usr/share/pyapp/linked.py").st_mtime) == \
        (pt.SDE if epoch else pt.RECENT)
    # what the conversion itself writes gets the fixed time
    assert int(os.lstat(root / ".singularity.d/Singularity").st_mtime) == \
        (pt.SDE if epoch else 0)


def test_source_sandbox_is_not_modified(hpccont, pytree, tmp_path):
    before = {p: os.lstat(p).st_mtime_ns for p in pytree.rglob("*")}
    heads = {p: p.read_bytes()[:16] for p in pytree.rglob("*.pyc")}
    build(hpccont, tmp_path / "a.sif", pytree, env=SDE_ENV)
    assert {p: os.lstat(p).st_mtime_ns for p in pytree.rglob("*")} == before
    assert {p: p.read_bytes()[:16] for p in pytree.rglob("*.pyc")} == heads


def test_conversions_are_reproducible(hpccont, pytree, tmp_path):
    for env in (None, SDE_ENV):
        digests = set()
        for name in ("a.sif", "b.sif"):
            build(hpccont, "-F", tmp_path / name, pytree, env=env)
            digests.add(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
        assert len(digests) == 1


# ---------------------------------------------------------------- SIF and squashfs conversion
@pytest.mark.parametrize("kind", ["sif", "squashfs"])
def test_image_to_image_keeps_pycs_valid(hpccont, pytree, tmp_path, kind):
    first = tmp_path / "first.sif"
    build(hpccont, first, pytree)
    if kind == "squashfs":
        src = tmp_path / "first.sqsh"
        helpers.mksquashfs(unpack(first, tmp_path / "first-tree"), src, comp="zstd")
    else:
        src = first
    for sandbox in (False, True):
        out = tmp_path / ("again" if sandbox else "again.sif")
        build(hpccont, *(["--sandbox"] if sandbox else []), out, src)
        root = image_tree(out, tmp_path)
        pt.assert_package_valid(root)
        assert mtime(root, "recentmod.py") == pt.RECENT


# ---------------------------------------------------------------- definition files
DEFFILE = """\
Bootstrap: localimage
From: {src}

%setup
    app="$HPCCONT_ROOTFS/{app}"
    echo 'BUILT = 7' > "$app/buildmod.py"
    /usr/bin/python3 -c 'import py_compile, sys; py_compile.compile(sys.argv[1], \
invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)' "$app/buildmod.py"
%files
    {hostpkg} /{app}/hostpkg
%post
    echo 'export FROM_POST=1' >> $HPCCONT_ENVIRONMENT
"""


@pytest.fixture
def hostpkg(tmp_path):
    """A package on the host with its bytecode, for %files (cp gives the copies new times)."""
    pkg = tmp_path / "hostpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("HOST = 8\n")
    os.utime(pkg / "__init__.py", (pt.RECENT, pt.RECENT))
    pt.compile_files([f"{pkg}/__init__.py:timestamp:0"])
    return pkg


@pytest.mark.parametrize("epoch", [False, True], ids=["no-epoch", "epoch"])
@pytest.mark.parametrize("sandbox", [False, True], ids=["sif", "sandbox"])
def test_deffile_build_keeps_pycs_valid(hpccont, pytree, hostpkg, tmp_path, epoch, sandbox):
    d = tmp_path / "py.def"
    d.write_text(DEFFILE.format(src=pytree, app=pt.APP, hostpkg=hostpkg))
    out = tmp_path / ("out" if sandbox else "out.sif")
    build(hpccont, *(["--sandbox"] if sandbox else []), out, d, env=SDE_ENV if epoch else None)
    root = image_tree(out, tmp_path)
    pt.assert_package_valid(root, expect=pt.PACKAGE_PYCS + 2)
    verbose = pt.python_verbose(root, pt.MODULES + ("buildmod", "hostpkg"))
    assert not pt.recompiled(verbose), pt.recompiled(verbose)
    fixed = pt.SDE if epoch else 0
    assert mtime(root, "oldmod.py") == pt.OLD
    assert mtime(root, "recentmod.py") == (pt.SDE if epoch else pt.RECENT)
    assert mtime(root, "buildmod.py") == fixed                # written by the build
    assert mtime(root, "hostpkg/__init__.py") == fixed


# ---------------------------------------------------------------- docker / OCI archives
def python_layer(tmp_path: Path) -> bytes:
    """A layer holding add_package's tree; the tar headers carry the files' times."""
    tree = tmp_path / "layer-tree"
    tree.mkdir()
    pt.add_package(tree)
    path = tmp_path / "python-layer.tar"

    def owner(info):
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        tf.add(tree / "usr", arcname="usr", filter=owner)
    return path.read_bytes()


@pytest.mark.parametrize("kind", ["docker-archive", "oci-archive", "oci"])
def test_archive_layers_keep_pycs_valid(hpccont, tmp_path, kind):
    layers = ox.busybox_layers(Path(helpers.BUSYBOX)) + [python_layer(tmp_path)]
    cfg = ox.image_config(diff_ids=[ox.sha(x) for x in layers], cmd=["/bin/sh"])
    src = tmp_path / "img"
    if kind == "oci":
        src.mkdir()
    {"docker-archive": ox.docker_archive, "oci-archive": ox.oci_archive,
     "oci": ox.oci_dir}[kind](src, layers, cfg)
    digests = set()
    for name in ("a.sif", "b.sif"):
        build(hpccont, tmp_path / name, f"{kind}:{src}")
        digests.add(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
    assert len(digests) == 1
    root = unpack(tmp_path / "a.sif", tmp_path / "tree")
    pt.assert_package_valid(root)
    assert_imports_from_bytecode(root)
    assert mtime(root, "recentmod.py") == pt.RECENT
    assert int(os.lstat(root / "opt/app").st_mtime) == 1_600_000_000   # ocifixtures' time


# ---------------------------------------------------------------- the clamp itself
def test_clamp_rewrites_only_pycs_that_matched(tmp_path):
    root = tmp_path / "r"
    app = pt.add_package(root)
    plan = times.plan(str(root), times.Clamp(pt.SDE, None, newer=True))
    rewritten = sorted(os.path.relpath(p, app) for p in plan.headers)
    assert rewritten == ["__pycache__/linkmod.cpython-311.pyc",
                         "__pycache__/recentmod.cpython-311.pyc",
                         "pkg/__pycache__/__init__.cpython-311.opt-1.pyc",
                         "pkg/__pycache__/__init__.cpython-311.pyc",
                         "pkg/__pycache__/sub.cpython-311.pyc"]
    times.apply(plan)
    pt.assert_package_valid(root)
    assert times.plan(str(root), times.Clamp(pt.SDE, None, newer=True)).empty()


def test_header_layouts():
    magic311 = (3495).to_bytes(2, "little") + b"\r\n"
    ts = magic311 + bytes(4) + (10).to_bytes(4, "little") + (5).to_bytes(4, "little")
    assert times.pyc_matches(ts, 10, 5) and not times.pyc_matches(ts, 11, 5)
    assert not times.pyc_matches(ts, 10, 6)
    assert times.pyc_matches(times.with_mtime(ts, 2**32 + 7), 7, 5)
    checked = magic311 + (3).to_bytes(4, "little") + bytes(8)
    assert times.header_layout(checked) is None
    py36 = (3379).to_bytes(2, "little") + b"\r\n" + (10).to_bytes(4, "little") + \
        (5).to_bytes(4, "little")
    assert times.header_layout(py36) == (4, 8) and times.pyc_matches(py36, 10, 5)
    py27 = (62211).to_bytes(2, "little") + b"\r\n" + (10).to_bytes(4, "little")
    assert times.header_layout(py27) == (4, None) and times.pyc_matches(py27, 10, 99)
    assert times.header_layout(b"\x7fELF" + bytes(12)) is None
    assert times.source_path("/a/__pycache__/m.cpython-311.pyc") == "/a/m.py"
    assert times.source_path("/a/__pycache__/m.cpython-311.opt-2.pyc") == "/a/m.py"
    assert times.source_path("/a/__pycache__/m.pyc") is None
    assert times.source_path("/a/m.pyc") == "/a/m.py"


# ---------------------------------------------------------------- a Debian image with python3
@pytest.mark.debootstrap
@pytest.mark.slow
def test_debian_python_imports_without_recompiling(hpccont, tmp_path):
    tree = helpers.debootstrap_rootfs("python3", include=("python3",))
    d = tmp_path / "deb.def"
    d.write_text(f"Bootstrap: localimage\nFrom: {tree}\n\n%post\n"
                 "    mkdir -p /opt/app\n"
                 "    echo 'V = 1' > /opt/app/appmod.py\n"
                 "    python3 -m compileall -q --invalidation-mode timestamp /opt/app\n"
                 "    apt-get update -q\n"
                 "    apt-get install -y -q --no-install-recommends python3-six\n"
                 "    rm -rf /var/lib/apt/lists/*\n")
    out = tmp_path / "py.sif"
    r = hpccont("build", "-q", out, d, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    code = ("import sys; sys.path.insert(0, '/opt/app'); "
            "import json, email, email.parser, http.client, xml.dom.minidom, six, appmod")
    r = hpccont("exec", out, "python3", "-v", "-c", code, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not pt.recompiled(r.stderr), pt.recompiled(r.stderr)[:10]
    assert r.stderr.count(" matches ") >= 30
    assert "/opt/app/__pycache__/appmod.cpython-311.pyc matches" in r.stderr
    assert "six.cpython-311.pyc matches" in r.stderr
