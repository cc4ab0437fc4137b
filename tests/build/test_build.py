"""Definition-file builds as root: every section, order, apps, stages, failures, options."""
import hashlib
import json
import os
import subprocess

import pytest

import helpers

pytestmark = pytest.mark.root

EVERYTHING = """\
Bootstrap: busybox
Stage: first

%post
    echo built-in-first > /artifact

Bootstrap: busybox
Stage: final

%setup
    echo "setup $HPCCONT_ROOTFS $APPTAINER_ROOTFS" > "$HPCCONT_ROOTFS/setup.txt"
    [ -z "$(ls $HPCCONT_ROOTFS/order 2>/dev/null)" ] && echo setup >> "$HPCCONT_ROOTFS/order"
%files
    data.txt /opt/data.txt
%files from first
    /artifact /opt/artifact
%post
    echo post >> /order
    test -f /opt/data.txt && echo files-before-post >> /order
    echo 'export FROM_POST=yes' >> $HPCCONT_ENVIRONMENT
    [ "$APPTAINER_ENVIRONMENT" = "$HPCCONT_ENVIRONMENT" ]
    id -u > /post-uid
%environment
    export FROM_ENV=1
%runscript
    echo "run: $*"
%startscript
    echo start
%labels
    Maintainer Someone Else
    Version 3
%help
    This image helps.
%test
    [ "$FROM_POST" = yes ] && [ "$FROM_ENV" = 1 ] && echo test-saw-env
%appinstall tool
    echo "#!/bin/sh" > bin/tool; echo "echo tool-ran" >> bin/tool; chmod +x bin/tool
    pwd > installed-in
%apprun tool
    echo "app env: $TOOLVAR $SCIF_APPNAME"
    exec /scif/apps/tool/bin/tool "$@"
%appenv tool
    export TOOLVAR=t
%applabels tool
    Kind cli
%apphelp tool
    Tool help.
%appfiles tool
    data.txt
%apptest tool
    tool
"""


@pytest.fixture
def defdir(tmp_path):
    (tmp_path / "data.txt").write_text("data\n")
    return tmp_path


def build(hpccont, defdir, text, *args, out_name="sb", sandbox=True):
    d = defdir / "image.def"
    d.write_text(text)
    out = defdir / out_name
    r = hpccont("build", *(["--sandbox"] if sandbox else []), *args, out, d)
    return r, out


def test_every_section_in_apptainer_order(hpccont, defdir):
    r, out = build(hpccont, defdir, EVERYTHING)
    assert r.returncode == 0, r.stderr
    assert "test-saw-env" in r.stdout
    _, rootfs, rootfs2 = (out / "setup.txt").read_text().split()
    assert rootfs == rootfs2 and rootfs.startswith(str(defdir / ".sb.partial-"))
    assert (out / "order").read_text().split() == ["setup", "post", "files-before-post"]
    assert (out / "opt/data.txt").read_text() == "data\n"
    assert (out / "opt/artifact").read_text() == "built-in-first\n"     # %files from STAGE
    assert (out / "post-uid").read_text().strip() == "0"
    sd = out / ".singularity.d"
    assert "echo \"run: $*\"" in (sd / "runscript").read_text()
    assert (sd / "runscript.help").read_text() == "    This image helps.\n"
    assert "FROM_POST=yes" in (sd / "env/91-environment.sh").read_text()
    assert "FROM_ENV=1" in (sd / "env/90-environment.sh").read_text()
    labels = json.loads((sd / "labels.json").read_text())
    assert labels["Maintainer"] == "Someone Else" and labels["Version"] == "3"
    assert labels["org.label-schema.usage.singularity.deffile.bootstrap"] == "busybox"
    app = out / "scif/apps/tool"
    assert (app / "installed-in").read_text().strip() == "/scif/apps/tool"
    assert (app / "data.txt").read_text() == "data\n"                   # %appfiles
    assert "bin/tool" in (app / "scif/runscript").read_text()
    assert "TOOLVAR=t" in (app / "scif/env/90-environment.sh").read_text()
    assert json.loads((app / "scif/labels.json").read_text())["Kind"] == "cli"
    assert (app / "scif/runscript.help").read_text().strip() == "Tool help."
    assert (out / "scif/data/tool/input").is_dir()
    assert "SCIF_APPRUN_tool=/scif/apps/tool/scif/runscript" in (
        sd / "env/94-appsbase.sh").read_text()
    # the app runs the way the runtime's run action starts it
    run = subprocess.run(["/usr/sbin/chroot", str(out), "/bin/sh", "-c",
                          "for f in /.singularity.d/env/*.sh; do . $f; done; tool; "
                          "exec /scif/apps/tool/scif/runscript"], capture_output=True, text=True,
                         env={"APPTAINER_APPNAME": "tool", "PATH": "/bin"})
    assert run.stdout == "tool-ran\napp env: t tool\ntool-ran\n", run.stderr
    assert not list(defdir.glob(".sb.partial-*"))


def test_failing_post_stops_with_its_exit_code_and_last_lines(hpccont, defdir):
    r, out = build(hpccont, defdir, "Bootstrap: busybox\n%post\n  echo line-one\n"
                   "  echo about-to-fail\n  exit 42\n%test\n  echo never\n")
    assert r.returncode == 42
    assert "%post failed with exit code 42" in r.stderr
    assert "about-to-fail" in r.stderr and "never" not in r.stdout
    assert not out.exists() and not list(defdir.glob(".sb.partial-*"))
    assert not helpers.mounts_mentioning(str(defdir))


def test_failing_test_and_notest(hpccont, defdir):
    text = "Bootstrap: busybox\n%test\n  echo checking; exit 3\n"
    r, out = build(hpccont, defdir, text)
    assert r.returncode == 3 and "%test failed with exit code 3" in r.stderr
    assert not out.exists()
    r, out = build(hpccont, defdir, text, "--notest")
    assert r.returncode == 0, r.stderr and out.is_dir()


def test_update_and_section_run_into_existing_sandbox(hpccont, defdir):
    r, out = build(hpccont, defdir, "Bootstrap: busybox\n%post\n  echo one > /one\n")
    assert r.returncode == 0, r.stderr
    (out / "keep").write_text("mine")
    r, out = build(hpccont, defdir, "Bootstrap: busybox\n%post\n  echo two > /two\n"
                   "%runscript\n  echo new-runscript\n", "--update", "--section", "post")
    assert r.returncode == 0, r.stderr
    assert (out / "one").exists() and (out / "two").exists() and (out / "keep").exists()
    assert "new-runscript" not in (out / ".singularity.d/runscript").read_text()


def test_section_with_interpreter_and_missing_shell(hpccont, defdir):
    r, out = build(hpccont, defdir, "Bootstrap: scratch\n%post\n  true\n")
    assert r.returncode == 5 and "has no /bin/sh" in r.stderr
    r, out = build(hpccont, defdir, "Bootstrap: busybox\n%post -c /bin/ash\n"
                   "  cat /proc/$$/cmdline > /shell\n")
    assert r.returncode == 0, r.stderr
    assert (out / "shell").read_text().split("\0")[0] == "/bin/ash"


def test_sif_build_is_reproducible(hpccont, defdir):
    # the same inputs: %setup would record the (random) work directory, so it is left out
    text = EVERYTHING.replace('echo "setup $HPCCONT_ROOTFS $APPTAINER_ROOTFS"', "echo setup")
    hashes = []
    for name in ("a.sif", "b.sif"):
        r, out = build(hpccont, defdir, text, out_name=name, sandbox=False)
        assert r.returncode == 0, r.stderr
        hashes.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert hashes[0] == hashes[1]
    r, out = build(hpccont, defdir, text, out_name="c.sif", sandbox=False)
    r2 = hpccont("build", "--no-reproducible", defdir / "d.sif", defdir / "image.def")
    assert r2.returncode == 0, r2.stderr
    assert hashlib.sha256((defdir / "d.sif").read_bytes()).hexdigest() != hashes[0]


def test_sif_runs_with_the_runtime(hpccont, defdir):
    r, out = build(hpccont, defdir, EVERYTHING, out_name="img.sif", sandbox=False)
    assert r.returncode == 0, r.stderr
    run = hpccont("run", out, "a", "b")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "run: a b"
    app = hpccont("run", "--app", "tool", out)
    assert app.returncode == 0 and app.stdout.endswith("tool-ran\n"), app.stderr


def test_interrupted_build_leaves_nothing(install, defdir):
    d = defdir / "slow.def"
    d.write_text("Bootstrap: busybox\n%post\n  echo started; sleep 30\n")
    out = defdir / "slow.sif"
    proc = subprocess.Popen([install["hpccont"], "build", out, d], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "started" in line:
            break
    proc.terminate()
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert not out.exists() and not list(defdir.glob(".slow.sif.partial-*"))
    assert not helpers.mounts_mentioning(str(defdir))
