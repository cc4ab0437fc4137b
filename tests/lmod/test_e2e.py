"""Generated modules end to end: real Lmod, the real runtime, a real SIF, the unprivileged user.

`module load` in non-interactive bash and sh, then the wrappers: stdin piped through, exit
statuses, arguments with spaces and quotes; the image-* commands; image-mpi under Open MPI's
mpirun; image-update against a local "central" image directory whose image changes.
"""
import hashlib
import os
import shutil
import subprocess

import pytest

import helpers
from lmodlib import build, labelled_rootfs, run_lmod

pytestmark = [pytest.mark.lmod, pytest.mark.rootless]

USER = helpers.TEST_USER


def as_user(shell, tree, body, **kw):
    return run_lmod(shell, tree, body, user=USER, **kw)


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_tools_run_in_image_with_stdin_args_and_status(sif_tree, lmod_available, shell):
    r = as_user(shell, sif_tree, """
module load bbtools/1.36 || exit 99
printf 'one\\ntwo\\n' | cat
sh -c 'test -e /.singularity.d/labels.json && echo INSIDE'
sh -c 'exit 7'; echo "RC=$?"
bbprintf '<%s>\\n' 'a b' "it's" '"quoted"' '' '$HOME' 'x  y'
""")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout.splitlines()
    assert out[:2] == ["one", "two"]
    assert "INSIDE" in out and "RC=7" in out
    assert out[-6:] == ["<a b>", "<it's>", '<"quoted">', "<>", "<$HOME>", "<x  y>"]
    assert not os.path.exists("/.singularity.d/labels.json")  # the host has no such file


def test_generic_image_commands(sif_tree, module_sif, lmod_available):
    r = as_user("sh", sif_tree, """
module load bbtools/1.36
image-run first 'second arg'
image-exec sh -c 'echo exec-ok; exit 3'; echo "RC=$?"
image-exec no-such-command; echo "MISSING=$?"
echo 'echo shell-ok' | image-shell
image-info
""")
    out = r.stdout
    assert "runscript args: first second arg" in out
    assert "exec-ok" in out and "RC=3" in out and "MISSING=127" in out
    assert "shell-ok" in out
    digest = "sha256:" + hashlib.sha256(module_sif.read_bytes()).hexdigest()
    assert digest in out and str(module_sif) in out
    assert "org.opencontainers.image.title: bbtools" in out


def test_wrapper_works_without_lmod_in_a_plain_child(sif_tree, lmod_available):
    """PATH and HPCCONT_IMAGE are all a child process (or an srun step) needs: no functions."""
    r = as_user("bash", sif_tree, """
module load bbtools/1.36
env -i PATH="$PATH" HPCCONT_MODULE="$HPCCONT_MODULE" HPCCONT_IMAGE="$HPCCONT_IMAGE" \
    /bin/sh -c 'echo piped | cat'
""")
    assert r.stdout.strip().splitlines()[-1] == "piped", r.stderr


# Not marked "mpi": pytest-mpi reserves that marker for tests run under mpirun --with-mpi.
def test_image_mpi_runs_ranks_in_the_image(sif_tree, lmod_available):
    if not shutil.which("mpirun"):
        pytest.skip("Open MPI's mpirun is not installed")
    r = as_user("bash", sif_tree, """
module load bbtools/1.36
image-mpi -np 2 --oversubscribe -- sh -c \
    'test -e /.singularity.d/labels.json && echo "rank $OMPI_COMM_WORLD_RANK of $OMPI_COMM_WORLD_SIZE"'
echo "RC=$?"
""", timeout=120)
    lines = sorted(l for l in r.stdout.splitlines() if l.startswith("rank"))
    assert lines == ["rank 0 of 2", "rank 1 of 2"], r.stdout + r.stderr
    assert "RC=0" in r.stdout


@pytest.mark.root
def test_image_mpi_as_root(sif_tree, lmod_available):
    if not shutil.which("mpirun"):
        pytest.skip("Open MPI's mpirun is not installed")
    r = run_lmod("bash", sif_tree, """
module load bbtools/1.36
image-mpi --allow-run-as-root --oversubscribe -np 2 -- sh -c 'echo "rank $OMPI_COMM_WORLD_RANK"; exit 0'
echo "RC=$?"
""", timeout=120)
    assert sorted(l for l in r.stdout.splitlines() if l.startswith("rank")) == \
        ["rank 0", "rank 1"], r.stdout + r.stderr


def test_image_update_from_central_dir(module_image, busybox_rootfs, world_tmp, shared_tmp,
                                       install, lmod_available, test_user):
    central = shared_tmp / "central"
    central.mkdir(mode=0o755)
    image = build(install, module_image, central / "tools.sif")
    tree = shared_tmp / "tree"
    r = subprocess.run([install["hpccont"], "module", "generate", str(image), "--name",
                        "tools/1", "--modulepath", str(tree)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cache = shared_tmp / "user-cache"
    env = {"HPCCONT_IMAGE_CACHE": str(cache)}
    copy = cache / "tools-1.sif"

    r = as_user("sh", tree, "module load tools/1; image-update --check; echo RC=$?", env=env)
    assert "RC=1" in r.stdout and "no local copy" in r.stdout
    r = as_user("sh", tree, "module load tools/1; image-update; echo RC=$?", env=env)
    assert "RC=0" in r.stdout, r.stdout + r.stderr
    assert copy.read_bytes() == image.read_bytes()
    assert "module load tools/1" in r.stdout       # told to reload to switch to the copy
    r = as_user("sh", tree, "module load tools/1; echo IMG=$HPCCONT_IMAGE; image-update; "
                "image-info | grep central", env=env)
    assert f"IMG={copy}" in r.stdout and "is up to date" in r.stdout
    assert "you run your own copy" in r.stdout

    # The site replaces the central image: the user's copy is refreshed, and the tools run it.
    newer = labelled_rootfs(shared_tmp / "newer", busybox_rootfs,
                            {"org.hpccont.commands": "cat sh", "release": "two"})
    build(install, newer, central / "tools.sif.new")
    os.replace(central / "tools.sif.new", image)
    r = as_user("sh", tree, "module load tools/1; image-update --check; echo RC=$?", env=env)
    assert "RC=1" in r.stdout and "central image changed" in r.stdout
    r = as_user("sh", tree, """
module load tools/1; image-update || exit 9
cat /.singularity.d/labels.json
""", env=env)
    assert '"release": "two"' in r.stdout, r.stdout + r.stderr
    assert copy.read_bytes() == image.read_bytes()

    # A published digest that does not match: refused, the user's copy stays as it was.
    (central / "tools.sif.sha256").write_text("0" * 64 + "  tools.sif\n")
    before = copy.read_bytes()
    r = as_user("sh", tree, "module load tools/1; image-update --force; echo RC=$?", env=env)
    assert "RC=4" in r.stdout and "published digest" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert copy.read_bytes() == before
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    (central / "tools.sif.sha256").write_text(f"{digest}  tools.sif\n")
    r = as_user("sh", tree, "module load tools/1; image-update --force; echo RC=$?", env=env)
    assert "RC=0" in r.stdout and f"sha256:{digest}" in r.stdout
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]
