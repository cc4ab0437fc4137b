"""Generated modulefiles under real Lmod (bash and sh), and the wrapper scripts they put on PATH.

The wrappers are run here against a recording stand-in for hpccont (passed with --hpccont) to
prove what they hand on: every argument byte for byte, stdin, the exit status.  The same
wrappers against the real runtime are in test_e2e.py.
"""
import os
import stat
import subprocess

import pytest

from lmodlib import labelled_rootfs, recorded_args

pytestmark = pytest.mark.lmod

SHELLS = ["bash", "sh"]


def generate(hpccont, image, name, modulepath, *extra):
    return hpccont("module", "generate", image, "--name", name, "--modulepath", modulepath,
                   *extra)


@pytest.fixture
def tree(shared_tmp):
    return shared_tmp / "modules"


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("flavour", ["lua", "tcl"])
def test_module_loads_and_unloads(hpccont, lmod, module_image, tree, recorder, shell, flavour):
    extra = ["--tcl"] if flavour == "tcl" else []
    r = generate(hpccont, module_image, "bbtools/1.36", tree, "--hpccont", recorder, *extra)
    assert r.returncode == 0, r.stderr
    mfile = tree / "bbtools" / ("1.36.lua" if flavour == "lua" else "1.36")
    assert mfile.is_file()
    r = lmod(shell, tree, """
module load bbtools/1.36 || exit 9
echo "IMAGE=$HPCCONT_IMAGE"
echo "MODULE=$HPCCONT_MODULE"
for c in cat sh bbprintf image-shell image-run image-exec image-mpi image-update image-info; do
    command -v "$c"
done
module unload bbtools
echo "AFTER=${HPCCONT_IMAGE-unset}"
command -v image-run || echo "no image-run"
""", env={"HOME": str(tree)})
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout.splitlines()
    assert f"IMAGE={module_image}" in out
    assert "MODULE=bbtools/1.36" in out
    bindir = tree / ".hpccont" / "bbtools" / "1.36" / "bin"
    for c in ("cat", "sh", "bbprintf", "image-mpi", "image-info"):
        assert str(bindir / c) in out
    assert "AFTER=unset" in out and "no image-run" in out


def test_wrapper_is_not_listed_as_module(hpccont, lmod, module_image, tree, recorder):
    generate(hpccont, module_image, "bbtools/1.36", tree, "--hpccont", recorder)
    r = lmod("bash", tree, "module -t avail 2>&1")
    names = [l.strip() for l in r.stdout.splitlines() if l.strip() and not l.endswith((":", "/"))]
    assert names == ["bbtools/1.36"], r.stdout


def test_help_and_whatis_come_from_labels_and_help(hpccont, lmod, module_image, tree, recorder):
    generate(hpccont, module_image, "bbtools/1.36", tree, "--hpccont", recorder)
    r = lmod("bash", tree, "module help bbtools/1.36 2>&1; module whatis bbtools/1.36 2>&1")
    assert 'Busybox [[tools]] with "quotes" and $dollars.' in r.stdout
    assert "Description: Busybox tools for tests" in r.stdout
    assert f"Image: {module_image}" in r.stdout
    assert "Commands: cat sh bbprintf" in r.stdout
    assert "org.opencontainers.image.version: 1.36" in r.stdout
    assert "image-mpi" in r.stdout


@pytest.mark.parametrize("flavour", ["lua", "tcl"])
def test_second_container_module_swaps_or_is_refused(hpccont, lmod, module_image, tree,
                                                     recorder, flavour):
    extra = ["--tcl"] if flavour == "tcl" else []
    for name in ("one/1", "two/2"):
        assert generate(hpccont, module_image, name, tree, "--hpccont", recorder,
                        *extra).returncode == 0
    r = lmod("bash", tree, """
module load one/1; module load two/2
echo "NOW=$HPCCONT_MODULE"; module -t list 2>&1
export LMOD_AUTO_SWAP=no
module load one/1; echo "RC=$?"; echo "STILL=$HPCCONT_MODULE"
""")
    assert "NOW=two/2" in r.stdout
    loaded = [l for l in r.stdout.splitlines() if l in ("one/1", "two/2")]
    assert loaded == ["two/2"]
    assert "RC=1" in r.stdout and "STILL=two/2" in r.stdout
    assert "one container module" in r.stderr or "only have one" in r.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_wrapper_passes_arguments_stdin_and_exit_status(hpccont, lmod, module_image, tree,
                                                         recorder, shell):
    generate(hpccont, module_image, "bbtools/1.36", tree, "--hpccont", recorder,
             "--bind", "/scratch,/data:/in:ro", "--nv")
    args = ["a b", "it's", 'say "hi"', "$HOME", "*", "", "-x", "back\\slash", "new\nline"]
    quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in args)
    r = lmod(shell, tree, f"""
module load bbtools/1.36
printf 'from stdin\\n' | FAKE_STDIN=1 FAKE_RC=42 bbprintf {quoted}
echo "RC=$?"
""")
    assert "RC=42" in r.stdout, r.stdout + r.stderr
    got = recorded_args(r.stdout)
    assert got[:8] == ["exec", "--nv", "--bind", "/scratch", "--bind", "/data:/in:ro",
                       str(module_image), "/bin/printf"]
    assert got[8:] == args
    assert "from stdin" in r.stdout.split("\nEND\n", 1)[1]


def test_wrapper_paths_with_spaces_and_quotes(hpccont, module_image, shared_tmp, recorder):
    odd = shared_tmp / "it's a \"tree\""
    img = shared_tmp / "img dir $x"
    os.symlink(module_image, img)
    r = generate(hpccont, img, "bbtools/1.36", odd, "--hpccont", recorder)
    assert r.returncode == 0, r.stderr
    cat = odd / ".hpccont/bbtools/1.36/bin/cat"
    p = subprocess.run([str(cat), "x y"], capture_output=True, text=True, env={"PATH": "/bin"})
    assert recorded_args(p.stdout) == ["exec", str(img), "cat", "x y"]


def test_image_commands_without_module_loaded_use_generated_image(hpccont, module_image, tree,
                                                                  recorder):
    generate(hpccont, module_image, "bbtools/1.36", tree, "--hpccont", recorder)
    bindir = tree / ".hpccont/bbtools/1.36/bin"
    env = {"PATH": "/bin:/usr/bin", "HPCCONT_MODULE": "other/1", "HPCCONT_IMAGE": "/elsewhere"}
    run = lambda *a: subprocess.run([str(bindir / a[0]), *a[1:]], capture_output=True,  # noqa
                                    text=True, env=env)
    assert recorded_args(run("image-exec", "ls", "-l").stdout) == ["exec", str(module_image),
                                                                   "ls", "-l"]
    assert recorded_args(run("image-run", "q").stdout) == ["run", str(module_image), "q"]
    assert recorded_args(run("image-shell").stdout)[:2] == ["shell", str(module_image)]
    r = run("image-exec")
    assert r.returncode == 2 and "usage: image-exec" in r.stderr
    env.update(HPCCONT_MODULE="bbtools/1.36")
    assert recorded_args(run("image-run").stdout) == ["run", "/elsewhere"]


def test_commands_from_scif_apps_and_runscript_fallback(hpccont, busybox_rootfs, shared_tmp,
                                                       recorder):
    apps = labelled_rootfs(shared_tmp / "apps", busybox_rootfs, {}, apps=["hello", "bye"])
    r = generate(hpccont, apps, "apps/1", shared_tmp / "m", "--hpccont", recorder)
    assert r.returncode == 0, r.stderr
    bindir = shared_tmp / "m/.hpccont/apps/1/bin"
    p = subprocess.run([str(bindir / "hello"), "x"], capture_output=True, text=True)
    assert recorded_args(p.stdout) == ["run", "--app", "hello", str(apps), "x"]
    assert (bindir / "bye").is_file()
    plain = labelled_rootfs(shared_tmp / "plain", busybox_rootfs, {})
    generate(hpccont, plain, "lolcow/2.0", shared_tmp / "m", "--hpccont", recorder)
    p = subprocess.run([str(shared_tmp / "m/.hpccont/lolcow/2.0/bin/lolcow"), "moo"],
                       capture_output=True, text=True)
    assert recorded_args(p.stdout) == ["run", str(plain), "moo"]


def test_explicit_commands_replace_discovered_ones(hpccont, module_image, tree, recorder):
    r = generate(hpccont, module_image, "bbtools/1.36", tree, "--hpccont", recorder,
                 "--command", "python=/usr/bin/python3", "--command", "ls")
    assert r.returncode == 0, r.stderr
    names = sorted(os.listdir(tree / ".hpccont/bbtools/1.36/bin"))
    assert "python" in names and "ls" in names and "cat" not in names
    p = subprocess.run([str(tree / ".hpccont/bbtools/1.36/bin/python"), "-c", "1"],
                       capture_output=True, text=True)
    assert recorded_args(p.stdout) == ["exec", str(module_image), "/usr/bin/python3", "-c", "1"]


def test_generate_from_squashfs_reads_labels(hpccont, lmod, module_squashfs, tree, recorder):
    r = generate(hpccont, module_squashfs, "bbtools/1.36", tree, "--hpccont", recorder)
    assert r.returncode == 0, r.stderr
    assert "cat sh bbprintf" in r.stdout
    r = lmod("sh", tree, "module whatis bbtools 2>&1")
    assert "Busybox tools for tests" in r.stdout


def test_generate_is_idempotent_and_prunes(hpccont, module_image, tree, recorder):
    assert "written" in generate(hpccont, module_image, "bbtools/1.36", tree, "--hpccont",
                                 recorder).stdout
    mfile = tree / "bbtools/1.36.lua"
    before = {p: p.stat().st_mtime_ns for p in tree.rglob("*") if p.is_file()}
    r = generate(hpccont, module_image, "bbtools/1.36", tree, "--hpccont", recorder)
    assert "unchanged" in r.stdout
    assert before == {p: p.stat().st_mtime_ns for p in tree.rglob("*") if p.is_file()}
    generate(hpccont, module_image, "bbtools/1.36", tree, "--hpccont", recorder,
             "--command", "cat", "--tcl")
    bindir = tree / ".hpccont/bbtools/1.36/bin"
    assert not (bindir / "bbprintf").exists() and (bindir / "cat").exists()
    assert not mfile.exists() and (tree / "bbtools/1.36").is_file()
    assert stat.S_IMODE((bindir / "cat").stat().st_mode) == 0o755


def test_hpccont_path_defaults_to_the_running_one(hpccont, install, module_image, tree):
    assert generate(hpccont, module_image, "bbtools/1.36", tree).returncode == 0
    text = (tree / ".hpccont/bbtools/1.36/bin/cat").read_text()
    assert f"exec {install['hpccont']} exec" in text
    assert f"--container-exec {install['container-exec']}" in \
        (tree / ".hpccont/bbtools/1.36/bin/image-mpi").read_text()


@pytest.mark.parametrize("args, message", [
    (["/nonexistent.sif", "--name", "a/1"], "image not found"),
    (["{img}", "--name", "noversion"], "NAME/VERSION"),
    (["{img}", "--name", "a/1", "--command", "bad name"], "bad command name"),
    (["{img}", "--name", "a/1", "--command", "image-run"], "reserved"),
    (["{img}", "--name", "a/1", "--command", "x", "--command", "x"], "given twice"),
    (["{notimage}", "--name", "a/1"], "not a SIF"),
    (["{img}"], "required"),
])
def test_bad_input_is_one_line(hpccont, module_image, tree, shared_tmp, recorder, args, message):
    notimage = shared_tmp / "notes.txt"
    notimage.write_text("hello\n")
    argv = [a.format(img=module_image, notimage=notimage) for a in args]
    r = hpccont("module", "generate", *argv, "--modulepath", tree, "--hpccont", recorder)
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr


def test_unwritable_modulepath_is_one_line(hpccont_user, module_image, shared_tmp, recorder):
    locked = shared_tmp / "locked"
    locked.mkdir(mode=0o755)
    r = hpccont_user("module", "generate", module_image, "--name", "a/1", "--modulepath",
                     locked / "tree", "--hpccont", recorder)
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and "permission denied" in r.stderr
