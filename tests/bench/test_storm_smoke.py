"""bench/storm, small: the slow-metadata passthrough counts what it serves, one image file on
it needs far fewer metadata operations than the same tree, and an interrupted run leaves no
mount behind.  Counts only, never times (this machine is shared and noisy).

A busybox tree with generated module files, read by ``find | xargs cat`` in 2 containers at
once, a 0.2 ms delay per metadata operation (bench/storm --tree busybox)."""
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

import helpers

STORM = helpers.REPO / "bench" / "storm"
MODULES = 60
pytestmark = [pytest.mark.rootless, pytest.mark.slow]


@pytest.fixture
def storm_ready(install, test_user):
    if os.geteuid() != 0:
        pytest.skip("bench/storm mounts FUSE with allow_other and switches users: needs root")
    for prog in ("ch-run", "mksquashfs"):
        if shutil.which(prog) is None:
            pytest.skip(f"needs {prog}")
    if subprocess.run(["/usr/bin/python3", "-c", "import fusepy"],
                      capture_output=True).returncode != 0:
        pytest.skip("needs python3-fusepy")
    return install


def storm_argv(install, workdir, *extra):
    return ["/usr/bin/python3", str(STORM), "--tree", "busybox", "--modules", str(MODULES),
            "--hpccont", install["hpccont"], "--user", helpers.TEST_USER,
            "--workdir", str(workdir), *extra]


def no_storm_left(workdir):
    assert not helpers.mounts_mentioning(str(workdir)), "a storm mount was left behind"
    servers = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"serve" in cmd and any(str(workdir).encode() in c for c in cmd):
            servers.append(pid)
    assert not servers, f"passthrough servers still running: {servers}"
    assert not list(workdir.glob("hpccont-storm-*")), "the work directory was left behind"


def test_counts_and_image_needs_far_fewer_metadata_operations(storm_ready, shared_tmp, tmp_path):
    out = tmp_path / "storm.json"
    r = subprocess.run(storm_argv(storm_ready, shared_tmp, "--n", "2", "--delay-ms", "0.2",
                                  "--threads", "4", "--variants", "tree-slow,sif-slow,tree-local",
                                  "--json", str(out), "--quiet"),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(out.read_text())
    cells = {(c["variant"], c["n"]): c for c in report["results"]}
    tree, sif, local = (cells[(v, 2)] for v in ("tree-slow", "sif-slow", "tree-local"))
    for c in (tree, sif, local):
        assert c["failed"] == 0, c["err"]

    # The passthrough counted what the tree run made it serve: each of the 2 containers looked
    # up, opened and read every module file and listed every package directory.
    ops = tree["ops"]
    assert ops.get("getattr", 0) >= 2 * MODULES
    assert ops.get("open", 0) >= 2 * MODULES
    assert ops.get("read", 0) >= 2 * MODULES
    assert ops.get("readdir", 0) >= 2 * (MODULES // 20)
    assert tree["metadata"] == sum(ops.get(k, 0) for k in report["metadata_ops"])
    assert report["served"]["metadata"] >= tree["metadata"] + sif["metadata"]

    # One image file: a few lookups and opens per launch, then only reads of that one file.
    assert sif["metadata"] > 0
    assert sif["ops"].get("read", 0) > 0
    assert sif["metadata"] * 20 <= tree["metadata"], (sif["ops"], tree["ops"])
    # The floor is on local disk: the slow filesystem serves it nothing.
    assert local["metadata"] == 0
    no_storm_left(shared_tmp)


def test_interrupted_run_leaves_nothing_mounted(storm_ready, shared_tmp):
    p = subprocess.Popen(storm_argv(storm_ready, shared_tmp, "--n", "2", "--delay-ms", "5",
                                    "--variants", "tree-slow,tree-local"),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         # Python takes SIGINT as Ctrl-C only where it is not ignored, which
                         # a runner in the background (nohup, &) passes on
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    try:
        for line in p.stdout:
            seen.append(line)
            if line.startswith("passthrough mounted on"):
                break
        else:
            pytest.fail("bench/storm never mounted its passthrough: " + "".join(seen)[-2000:])
        mountpoint = line.split()[3].rstrip(":")
        assert os.path.ismount(mountpoint)
        time.sleep(1.0)                  # a tree run is under way (5 ms per operation)
        p.send_signal(signal.SIGINT)
        rest, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode != 0
    assert "interrupted" in rest, rest[-2000:]
    assert not os.path.exists(mountpoint)        # the work directory is gone too
    no_storm_left(shared_tmp)
