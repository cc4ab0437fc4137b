"""generate-all over a site's image directory, check, image-mpi's launcher choice, the update
decisions and the module-tree additions for containers."""
import os
import subprocess

import pytest

import helpers
from lmodlib import labelled_rootfs

from hpccont.errors import ImageError, SignatureError
from hpccont.modules import generate_all as ga
from hpccont.host import lmod as inside
from hpccont.modules import update
from hpccont.modules.mpi_launch import mpi_argv

pytestmark = pytest.mark.lmod


@pytest.fixture
def site_dir(shared_tmp, busybox_rootfs, install):
    """Images as a site keeps them: labelled, named by file only, a corrupt one, a stray file."""
    d = shared_tmp / "images"
    d.mkdir()
    titled = labelled_rootfs(shared_tmp / "r1", busybox_rootfs,
                             {"org.opencontainers.image.title": "PyTorch",
                              "org.opencontainers.image.version": "2.1.0",
                              "org.hpccont.commands": "python"})
    helpers.mksquashfs(titled, d / "whatever.sqsh")
    plain = labelled_rootfs(shared_tmp / "r2", busybox_rootfs, {})
    helpers.mksquashfs(plain, d / "samtools-1.9.sqsh")
    helpers.mksquashfs(plain, d / "lolcow.sqsh")
    (d / "broken.sif").write_bytes(b"\x00" * 200)
    (d / "README.txt").write_text("not an image\n")
    return d


def test_names_from_labels_and_file_names(hpccont, site_dir, shared_tmp):
    tree = shared_tmp / "tree"
    r = hpccont("module", "generate-all", site_dir, "--modulepath", tree)
    assert r.returncode == 1, r.stdout + r.stderr          # the corrupt image is reported
    lines = {l.split()[1]: l for l in r.stdout.splitlines() if l.split()[1] != "-"}
    assert set(lines) == {"pytorch/2.1.0", "samtools/1.9", "lolcow/latest"}
    assert all(l.startswith("written") for l in lines.values())
    assert "skipped" in r.stdout and "broken.sif" in r.stdout and "README" not in r.stdout
    assert (tree / "pytorch/2.1.0.lua").is_file()
    assert (tree / ".hpccont/pytorch/2.1.0/bin/python").is_file()
    assert (tree / ".hpccont/lolcow/latest/bin/lolcow").is_file()

    r = hpccont("module", "generate-all", site_dir, "--modulepath", tree)
    assert [l.split()[0] for l in r.stdout.splitlines() if "broken" not in l] == ["unchanged"] * 3


def test_rerun_does_not_rehash_unchanged_images(site_dir, shared_tmp, install, monkeypatch):
    tree = shared_tmp / "tree"
    hp = install["hpccont"]
    ga.generate_all(str(site_dir), str(tree), hpccont=hp)

    def no_hash(path):
        raise AssertionError(f"{path} hashed again")
    monkeypatch.setattr("hpccont.modules.generate.sha256_file", no_hash)
    result = ga.generate_all(str(site_dir), str(tree), hpccont=hp)
    assert [o.status for o in result.outcomes if o.name] == ["unchanged"] * 3


@pytest.mark.parametrize("file, expected", [
    ("tensorflow-2.4.sif", ("tensorflow", "2.4")),
    ("gromacs_2023.1.sif", ("gromacs", "2023.1")),
    ("my-tool-v1.2.3.sqsh", ("my-tool", "v1.2.3")),
    ("lolcow.sif", ("lolcow", "latest")),
    ("weird name.img", ("weird name", "latest")),
])
def test_name_from_file(file, expected):
    assert ga.name_from_file("/x/" + file) == expected


def test_duplicate_names_are_skipped(hpccont, site_dir, shared_tmp):
    os.link(site_dir / "samtools-1.9.sqsh", site_dir / "samtools_1.9.sqsh")
    r = hpccont("module", "generate-all", site_dir, "--modulepath", shared_tmp / "t")
    assert "name also used by" in r.stdout and r.returncode == 1


def test_check_reports_stale_and_broken(hpccont, site_dir, shared_tmp):
    tree = shared_tmp / "tree"
    hpccont("module", "generate-all", site_dir, "--modulepath", tree)
    r = hpccont("module", "check", "--modulepath", tree)
    assert r.returncode == 0 and "3 modules, 3 ok" in r.stdout, r.stdout

    os.utime(site_dir / "lolcow.sqsh", ns=(0, 0))             # touched, same content: fine
    assert hpccont("module", "check", "--modulepath", tree).returncode == 0
    with open(site_dir / "samtools-1.9.sqsh", "ab") as f:     # content changed
        f.write(b"\0" * 4096)
    (site_dir / "whatever.sqsh").unlink()                     # image gone
    (tree / ".hpccont/lolcow/latest/bin/image-mpi").unlink()  # wrapper gone
    r = hpccont("module", "check", "--modulepath", tree)
    assert r.returncode == 1
    assert "samtools/1.9: stale: image" in r.stdout
    assert "pytorch/2.1.0: broken: image" in r.stdout
    assert "lolcow/latest: broken: wrapper" in r.stdout and "image-mpi" in r.stdout

    (tree / "lolcow/latest.lua").unlink()
    r = hpccont("module", "check", "--modulepath", tree)
    assert "lolcow/latest: stale: wrappers of a module that no longer exists" in r.stdout


def test_check_ignores_hand_written_modules(hpccont, shared_tmp):
    tree = shared_tmp / "tree"
    (tree / "gcc").mkdir(parents=True)
    (tree / "gcc/12.lua").write_text('prepend_path("PATH", "/opt/gcc/bin")\n')
    r = hpccont("module", "check", "--modulepath", tree)
    assert r.returncode == 0 and "0 modules" in r.stdout
    r = hpccont("module", "check", "--modulepath", shared_tmp / "missing")
    assert r.returncode == 2 and "does not exist" in r.stderr


# ------------------------------------------------------------------------------ image-mpi

@pytest.mark.parametrize("environ, launcher", [
    ({}, ["mpirun"]),
    ({"SLURM_JOB_ID": "42"}, ["srun"]),
    ({"SLURM_JOB_ID": "42", "HPCCONT_MPI_LAUNCHER": "srun --mpi=pmix"}, ["srun", "--mpi=pmix"]),
    ({"HPCCONT_MPI_LAUNCHER": "mpirun.mpich"}, ["mpirun.mpich"]),
])
def test_mpi_launcher_choice(environ, launcher):
    argv = mpi_argv(["-np", "4", "--", "./app", "a b"], "/img.sif", "/bin/container-exec",
                    ["--nv"], environ)
    assert argv == launcher + ["-np", "4", "/bin/container-exec", "--nv", "/img.sif", "./app",
                               "a b"]


def test_mpi_without_separator_is_all_command(hpccont):
    r = hpccont("module", "mpi", "--image", "/i.sif", "--container-exec", "/ce", "--bind", "/s",
                "--dry-run", "--", "./app", "-np", "2", env={"HPCCONT_MPI_ARGS": "-np 3"})
    assert r.stdout.split() == ["mpirun", "-np", "3", "/ce", "--bind", "/s", "/i.sif", "./app",
                                "-np", "2"]
    r = hpccont("module", "mpi", "--image", "/i.sif", "--container-exec", "/ce", "--", "-np", "2",
                "--")
    assert r.returncode == 2 and "usage: image-mpi" in r.stderr


def test_mpi_missing_launcher_is_127(hpccont):
    r = hpccont("module", "mpi", "--image", "/i.sif", "--container-exec", "/ce", "--", "true",
                env={"HPCCONT_MPI_LAUNCHER": "no-such-mpirun"})
    assert r.returncode == 127 and "no-such-mpirun" in r.stderr


# ------------------------------------------------------------------------------ image-update

@pytest.fixture
def central(shared_tmp, busybox_squashfs):
    img = shared_tmp / "central.sqsh"
    img.write_bytes(busybox_squashfs.read_bytes())
    return img


def test_update_decisions(central, shared_tmp):
    local = shared_tmp / "cache" / "t-1.sqsh"
    assert update.plan_update(str(central), str(local)).action == "copy"
    plan = update.plan_update(str(central), str(local))
    assert update.copy_verified(plan) == "unsigned"
    assert local.read_bytes() == central.read_bytes()
    assert update.plan_update(str(central), str(local)).action == "up-to-date"
    assert update.plan_update(str(central), str(local), force=True).reason == "forced"
    central.write_bytes(central.read_bytes() + b"\2" * 4096)   # still a valid image
    assert update.plan_update(str(central), str(local)).reason == "central image changed"


def test_failed_signature_keeps_old_copy(central, shared_tmp):
    local = shared_tmp / "t.sqsh"
    local.write_bytes(b"old")
    plan = update.plan_update(str(central), str(local))
    with pytest.raises(SignatureError):
        update.copy_verified(plan, required_signature=True, run_verify=lambda p: 1)
    assert local.read_bytes() == b"old"
    assert sorted(os.listdir(shared_tmp)) == ["central.sqsh", "t.sqsh"]   # no temporary left
    assert update.copy_verified(plan, required_signature=True, run_verify=lambda p: 0) == "verified"
    assert local.read_bytes() == central.read_bytes()


def test_update_refuses_sandbox_and_missing(shared_tmp):
    with pytest.raises(ImageError, match="sandbox"):
        update.plan_update(str(shared_tmp), str(shared_tmp / "x"))
    with pytest.raises(ImageError, match="does not exist"):
        update.plan_update(str(shared_tmp / "gone.sif"), str(shared_tmp / "x"))


def test_local_copy_path_and_moved_central(shared_tmp):
    env = {"HOME": "/home/u", "HPCCONT_MODULE": "a/1", "HPCCONT_IMAGE_LOCAL": "/c/a-1.sif"}
    assert update.local_copy_path("a/1", "a-1.sif", env) == "/c/a-1.sif"
    assert update.local_copy_path("b/2", "b-2.sif", env) == \
        "/home/u/.local/share/hpccont/images/b-2.sif"
    (shared_tmp / "moved.sif").write_bytes(b"x")
    cfg = {"modules": {"central_image_dir": str(shared_tmp)}}
    assert update.resolve_central("/old/place/moved.sif", cfg) == str(shared_tmp / "moved.sif")


# ------------------------------------------------------------------------------ inside

def test_no_tree_adds_nothing():
    add = inside.module_tree_additions({"modules": {"tree": [], "lmod_init": "/x"}})
    assert add.mounts == [] and add.env == {}


def test_tree_binds_lmod_and_its_interpreter(shared_tmp, lmod_available):
    tree = shared_tmp / "modtree"
    tree.mkdir()
    cfg = {"modules": {"tree": [str(tree), str(shared_tmp / "absent")],
                       "lmod_init": str(lmod_available)}}
    add = inside.module_tree_additions(cfg)
    by_target = {m.target: m for m in add.mounts}
    assert by_target[str(tree)].source == str(tree) and by_target[str(tree)].readonly
    prefix = os.path.dirname(str(lmod_available))
    assert by_target[prefix].source == os.path.realpath(prefix)
    lua = inside.interpreter(os.path.join(prefix, "libexec", "lmod"))
    launcher = by_target[lua]
    assert launcher.kind == "file" and launcher.content.startswith("#!/bin/sh")
    private = by_target[f"{inside.PRIVATE}/bin/{os.path.basename(lua)}"]
    assert private.source == os.path.realpath(lua)
    libs = [m.target for m in add.mounts if m.target.startswith(inside.PRIVATE + "/lib/")]
    assert any("libreadline" in t for t in libs)
    assert not any(os.path.basename(t).startswith(inside.LIBC_FAMILY) for t in libs)
    assert all(m.readonly for m in add.mounts)
    assert add.env["MODULEPATH"] == str(tree)
    assert add.env["BASH_ENV"] == os.path.join(str(lmod_available), "bash")
    assert any("absent" in w for w in add.warnings)


def test_lmod_interpreter_and_launcher_work_from_the_private_paths(shared_tmp, lmod_available):
    """Run the launcher script the container gets, against the same files on the host."""
    add = inside.module_tree_additions({"modules": {"tree": [str(shared_tmp)],
                                                    "lmod_init": str(lmod_available)}})
    root = shared_tmp / "view"
    for m in add.mounts:
        if m.target.startswith(inside.PRIVATE):
            dest = root / m.target.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(m.source, dest)
    launcher = next(m for m in add.mounts if m.kind == "file").content
    script = launcher.replace(inside.PRIVATE, str(root / inside.PRIVATE.lstrip("/")))
    r = subprocess.run(["sh", "-c", script.split("\n", 2)[2], "lua", "-e", "print(1+1)"],
                       capture_output=True, text=True)
    assert r.stdout.strip() == "2", r.stderr


def test_update_with_real_signatures(shared_tmp, hpccont, busybox_sif, monkeypatch):
    """A signed central image: verified with the site keyring (the real `hpccont verify`),
    accepted without a keyring when the site does not require signatures, refused when the
    keyring holds another key."""
    central = shared_tmp / "signed.sif"
    central.write_bytes(busybox_sif.read_bytes())
    assert hpccont("key", "newpair", "--out", shared_tmp / "site").returncode == 0
    assert hpccont("key", "newpair", "--out", shared_tmp / "other").returncode == 0
    assert hpccont("sign", "--key", shared_tmp / "site.pem", central).returncode == 0
    cfg = shared_tmp / "site.yaml"

    def update_with(keys, name):
        cfg.write_text("signatures:\n  keyring: [%s]\n" % ", ".join(str(k) for k in keys))
        monkeypatch.setenv("HPCCONT_CONFIG", str(cfg))
        plan = update.plan_update(str(central), str(shared_tmp / "cache" / name))
        return update.copy_verified(plan, keyring=bool(keys))
    assert update_with([shared_tmp / "site.pub.pem"], "a.sif") == "verified"
    assert update_with([], "b.sif") == "no keyring"
    with pytest.raises(SignatureError, match="old copy is kept"):
        update_with([shared_tmp / "other.pub.pem"], "c.sif")
    assert not (shared_tmp / "cache" / "c.sif").exists()
