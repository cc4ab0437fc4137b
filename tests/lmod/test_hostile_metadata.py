"""Modules generated from a hostile image run nothing of the image author's, under real Lmod.

An image's %help, labels, SCIF app names and its file name reach the modulefile (Lua or Tcl)
and the wrapper scripts.  Each payload below tries to run ``touch MARK`` on the host when the
module is loaded, asked for help or whatis, or a wrapper runs; none may, and the text must come
through as text.  The cases reproduce attacks that worked against the two-pass template fill
(help filled first, then ``@@WHATIS@@`` inside it) and against unescaped Tcl braces and
tcl2lua's ``[===[`` strings.
"""
import json
import os
import subprocess

import pytest

from lmodlib import labelled_rootfs, recorded_args

pytestmark = pytest.mark.lmod


def payloads(mark):
    lua = f'os.execute("touch {mark}")'
    tcl = f"exec touch {mark}"
    return {
        # help filled before whatis: the whatis lines, inserted into the help string, end it
        "lua-whatis-inside-help": (
            f"@@WHATIS@@ {lua} --[===[",
            {"org.opencontainers.image.description": "]]", "zzz": "]===] x=(nil)or([=["}),
        "lua-closing-brackets": (
            f"]] {lua} --[[ ]=] {lua} ]==] {lua}",
            {"org.opencontainers.image.description": f"]=] {lua} [=[", "l": "]]]]]=]"}),
        "placeholders-in-values": (
            "@@HELP@@ @@IMAGE@@ @@BINDIR@@ @@STAMP@@ @@NOPE@@",
            {"org.opencontainers.image.description": "@@WHATIS@@ @@MODULE@@"}),
        # Tcl: a brace ends the help procedure's body; $ and [ ] substitute
        "tcl-brace": (f"}}\n{tcl}\nproc y {{}} {{", {"d": "{", "e": "}"}),
        "tcl-substitution": (f"[{tcl}] $env(HOME) \\", {"org.opencontainers.image.description":
                                                       f"[{tcl}] $::env(PATH) \\\" \\"}),
        # tcl2lua wraps whatis and help text in [===[ ]===]
        "tcl2lua-long-brackets": (
            f']===]) {lua} help([===[',
            {"org.opencontainers.image.description": f']===]) {lua} whatis([===[',
             "tail": "ends in ]==="}),
        "control-characters": ("line\x01\x7f\ttab\r\nnext", {"org.opencontainers.image.description":
                                                              "a\rb\x1b[31mred"}),
    }


CASES = list(payloads("/x"))


def hostile_image(base, dest, help_text, labels):
    return labelled_rootfs(dest, base, dict(labels, **{"org.hpccont.commands": "cat"}),
                           help_text=help_text)


def shown_in_tcl(text):
    """What tcl2lua must be given: ]=== before ] or at the end broken up."""
    import re
    return re.sub(r"\]===(?=\]|\s*\Z)", "] ===", text)


@pytest.mark.parametrize("flavour", ["lua", "tcl"])
@pytest.mark.parametrize("case", CASES)
def test_hostile_help_and_labels_run_nothing(hpccont, lmod, busybox_rootfs, shared_tmp,
                                             recorder, flavour, case):
    mark = shared_tmp / "MARK"
    help_text, labels = payloads(mark)[case]
    img = hostile_image(busybox_rootfs, shared_tmp / "img", help_text, labels)
    tree = shared_tmp / "modules"
    extra = ["--tcl"] if flavour == "tcl" else []
    r = hpccont("module", "generate", img, "--name", "evil/1", "--modulepath", tree,
                "--hpccont", recorder, *extra)
    assert r.returncode == 0, r.stderr
    r = lmod("bash", tree, """
module load evil/1; echo "LOAD=$?"
echo "MODULE=$HPCCONT_MODULE"
module help evil/1 2>&1
module whatis evil/1 2>&1
module show evil/1 > /dev/null 2>&1
module -t avail > /dev/null 2>&1
module spider evil/1 > /dev/null 2>&1
cat < /dev/null > /dev/null
module unload evil/1; echo "UNLOAD=$?"
""", env={"HOME": str(shared_tmp)})
    assert not mark.exists(), f"image code ran on the host:\n{r.stdout}\n{r.stderr}"
    assert "LOAD=0" in r.stdout and "UNLOAD=0" in r.stdout, r.stdout + r.stderr
    assert "MODULE=evil/1" in r.stdout
    # the text is shown as text (Lmod prints what it was given; tcl2lua's brackets aside)
    first = help_text.strip().splitlines()[0]
    want = shown_in_tcl(first) if flavour == "tcl" else first
    if "\x01" not in first:
        assert want in r.stdout, r.stdout


def test_hostile_module_loaded_by_another_user(hpccont, lmod, busybox_rootfs, shared_tmp,
                                               recorder, test_user):
    """The threat: an admin generates modules for user-supplied images; users load them."""
    mark = shared_tmp / "MARK"
    for i, (case, (help_text, labels)) in enumerate(payloads(mark).items()):
        img = hostile_image(busybox_rootfs, shared_tmp / f"img{i}", help_text, labels)
        for flavour in ("", "--tcl"):
            name = f"evil{i}{'t' if flavour else 'l'}/1"
            r = hpccont("module", "generate", img, "--name", name, "--modulepath",
                        shared_tmp / "modules", "--hpccont", recorder,
                        *([flavour] if flavour else []))
            assert r.returncode == 0, r.stderr
    os.system(f"chmod -R a+rX {shared_tmp}")
    names = sorted(os.listdir(shared_tmp / "modules"))
    body = "\n".join(f"module load {n}/1 && module help {n}/1 && module unload {n}/1 || echo BAD {n}"
                     for n in names if not n.startswith("."))
    r = lmod("sh", shared_tmp / "modules", body, user="hpcuser")
    assert not mark.exists(), r.stdout + r.stderr
    assert "BAD" not in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_hostile_wrapper_values(hpccont, lmod, busybox_rootfs, shared_tmp, recorder, shell):
    """Image file name and command targets with shell syntax and placeholders: every wrapper
    passes them on byte for byte and runs nothing."""
    mark = shared_tmp / "MARK"
    target = f"/bin/x';touch${{IFS}}{mark};'$(touch${{IFS}}{mark})`touch${{IFS}}{mark}`@@IMAGE@@"
    img = labelled_rootfs(shared_tmp / "img @@TARGET@@ $(touch x) 'q' \"dq\" ]] ]=]",
                          busybox_rootfs,
                          {"org.hpccont.commands": f"tool={target},plain"})
    tree = shared_tmp / "modules"
    r = hpccont("module", "generate", img, "--name", "evil/1", "--modulepath", tree,
                "--hpccont", recorder, "--bind", "/a b:/c'd")
    assert r.returncode == 0, r.stderr
    r = lmod(shell, tree, """
module load evil/1 || echo LOADFAIL
tool one
plain two
image-exec three
image-run four
image-shell five
image-info six
image-update --check
image-mpi seven
""", env={"HOME": str(shared_tmp)})
    assert not mark.exists(), r.stdout + r.stderr
    assert "LOADFAIL" not in r.stdout, r.stderr
    calls = [recorded_args("ARGS:" + part) for part in r.stdout.split("ARGS:")[1:]]
    assert calls[0] == ["exec", "--bind", "/a b:/c'd", str(img), target, "one"]
    assert calls[1] == ["exec", "--bind", "/a b:/c'd", str(img), "plain", "two"]
    assert [str(img) in c for c in calls] == [True] * len(calls)
    assert len(calls) == 8
    bindir = tree / ".hpccont/evil/1/bin"
    for f in os.listdir(bindir):
        assert subprocess.run(["sh", "-n", str(bindir / f)]).returncode == 0
    stamp = (tree / "evil/1.lua").read_text().splitlines()[1]
    assert json.loads(stamp.split("hpccont-module: ", 1)[1])["image"] == str(img)


def test_sandbox_links_do_not_read_host_files(hpccont, busybox_rootfs, shared_tmp, recorder):
    """Root generating modules for a user's sandbox: a %help or labels file that is a link to
    a host file (/etc/shadow) must not land in the world-readable modulefile."""
    import shutil
    secret = shared_tmp / "host-secret"
    secret.write_text('{"org.opencontainers.image.description": "HOST-SECRET"}\n')
    root = shared_tmp / "sandbox"
    shutil.copytree(busybox_rootfs, root, symlinks=True)
    sd = root / ".singularity.d"
    (sd / "labels.json").unlink()
    (sd / "labels.json").symlink_to(secret)
    (sd / "runscript.help").symlink_to("../../../../../../../../etc/shadow")
    (root / "scif").symlink_to(shared_tmp)            # apps listed from the host dir
    (shared_tmp / "apps").mkdir()
    (shared_tmp / "apps" / "hostapp").mkdir()
    r = hpccont("module", "generate", root, "--name", "linked/1", "--modulepath",
                shared_tmp / "modules", "--hpccont", recorder)
    assert r.returncode == 0, r.stderr
    text = (shared_tmp / "modules/linked/1.lua").read_text()
    assert "HOST-SECRET" not in text and "root:" not in text
    assert not (shared_tmp / "modules/.hpccont/linked/1/bin/hostapp").exists()
