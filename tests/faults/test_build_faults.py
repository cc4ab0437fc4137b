"""Faults of ``hpccont build``: kill -9 while mksquashfs packs, and a full disk.

A killed build runs no cleanup.  Its mksquashfs must not go on packing (it dies with the build:
PR_SET_PDEATHSIG, image/leftovers.py); the work directory and partial output it leaves are
removed by the next build writing to the same directory.  A full disk makes the build fail
with one line and leaves nothing on the full filesystem.  As the test user and as root.
"""
import os
import shutil
import subprocess
import time

import pytest

import helpers
from faultlib import children, comm, proc_state, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def big_rootfs(busybox_rootfs, fault_dir):
    """The busybox tree plus 48 MiB that does not compress: mksquashfs runs for a while."""
    root = fault_dir / "big-rootfs"
    shutil.copytree(busybox_rootfs, root, symlinks=True)
    with open(root / "blob", "wb") as f:
        f.write(os.urandom(48 << 20))
    subprocess.run(["chmod", "-R", "a+rX", str(fault_dir)], check=True)
    return root


@pytest.fixture(params=["user", "root"])
def builder(request, fault_dir):
    """(passwd entry or None for root, an output directory that user owns)."""
    pw = request.getfixturevalue("test_user") if request.param == "user" else None
    out = fault_dir / f"out-{request.param}-{request.node.name[-30:].replace('[', '')[:20]}"
    out.mkdir()
    if pw:
        os.chown(out, pw.pw_uid, pw.pw_gid)
    return pw, out


def _build(install, pw, *args, **kw):
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
           "HOME": pw.pw_dir if pw else "/root"}
    ids = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[]) if pw else {}
    return subprocess.Popen([install["hpccont"], "build", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **ids, **kw)


def _descendants(pid):
    found = []
    for c in children(pid):
        found += [c] + _descendants(c)
    return found


def test_build_killed_while_packing(install, big_rootfs, busybox_rootfs, builder):
    pw, out = builder
    build = _build(install, pw, out / "big.sif", big_rootfs)
    packer = wait_for(lambda: [p for p in _descendants(build.pid) if comm(p) == "mksquashfs"],
                      what="mksquashfs")[0]
    os.kill(build.pid, 9)
    since = time.monotonic()
    build.communicate()
    wait_for(lambda: proc_state(packer) in ("Z", "X", "gone"), 10, "mksquashfs to die")
    gone_after = time.monotonic() - since
    left = sorted(p.name for p in out.iterdir())
    assert left and all(n.startswith(".hpccont-build-") or ".partial-" in n for n in left), left
    nxt = _build(install, pw, out / "small.sif", busybox_rootfs)
    _, err = nxt.communicate(timeout=120)
    assert nxt.returncode == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["small.sif"]
    print(f"\nbuild killed ({'user' if pw else 'root'}): mksquashfs gone after "
          f"{gone_after * 1000:.0f} ms; {left} removed by the next build")


# 2 MiB: mksquashfs finds the disk full; 72 MiB: the 48 MiB squashfs fits, its SIF copy not.
@pytest.fixture(params=["2m", "72m"])
def full_fs(fault_dir, builder, request):
    """A small tmpfs the builder owns, standing for a full disk."""
    pw, _ = builder
    d = fault_dir / f"full-{'user' if pw else 'root'}-{request.param}"
    d.mkdir()
    opts = f"size={request.param},mode=0755" + (f",uid={pw.pw_uid},gid={pw.pw_gid}" if pw else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "hpccont-full", str(d)], check=True)
    yield d
    subprocess.run(["umount", str(d)], check=True)
    d.rmdir()


def test_build_on_a_full_disk(install, big_rootfs, busybox_rootfs, builder, full_fs):
    pw, _ = builder
    build = _build(install, pw, full_fs / "big.sif", big_rootfs)
    _, err = build.communicate(timeout=120)
    lines = [line for line in err.splitlines() if "hpccont build:" in line    # not progress
             and not line.endswith(": start") and " FAILED in " not in line]
    assert build.returncode != 0 and "Traceback" not in err, err
    assert "no space left on device" in err.lower(), err
    assert len(lines) == 1, err
    assert list(full_fs.iterdir()) == []                  # nothing left on the full disk
    if full_fs.name.endswith("72m"):       # nothing left taking room: what fits is built
        nxt = _build(install, pw, full_fs / "small.sif", busybox_rootfs)
        _, err = nxt.communicate(timeout=120)
        assert nxt.returncode == 0, err
    print(f"\nbuild on a full disk ({'user' if pw else 'root'}): {lines[0]}")


def test_a_build_of_another_host_or_a_live_one_is_left_alone(install, busybox_rootfs,
                                                              fault_dir):
    """Only this host's dead builds are swept: on a shared filesystem another node's PID says
    nothing here, and a live build's work must never go."""
    out = fault_dir / "sweep"
    out.mkdir()
    host = os.uname().nodename
    keep = [f".hpccont-build-{host}x-1-abc", f".img.sif.partial-{host}-{os.getpid()}",
            ".hpccont-build-other-node-99999999-abc"]
    gone = [f".hpccont-build-{host}-99999999-abc", f".img.sif.partial-{host}-99999998"]
    for name in keep + gone:
        (out / name).mkdir()
    nxt = _build(install, None, out / "small.sif", busybox_rootfs)
    _, err = nxt.communicate(timeout=120)
    assert nxt.returncode == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(keep + ["small.sif"])
    assert helpers.REPO.exists()


def test_build_killed_during_post(install, busybox_sif, builder, fault_dir):
    """A definition build killed while %post runs: the section (PID 1 of its own PID
    namespace, image/build/fakeroot.py) and everything it started go with the build."""
    pw, out = builder
    marker = f"sleep 3{7 if pw else 8}"
    deffile = out / "post.def"
    deffile.write_text(f"Bootstrap: localimage\nFrom: {busybox_sif}\n%post\n"
                       f"  {marker} &\n  {marker}\n")
    deffile.chmod(0o644)
    build = _build(install, pw, *(["--fakeroot"] if pw else []), out / "post.sif", deffile)

    def two_sleeps():
        found = [p for p in _descendants(build.pid) if comm(p) == "sleep"]
        return found if len(found) == 2 else None
    sleeps = wait_for(two_sleeps, 60, "the two sleeps of %post")
    os.kill(build.pid, 9)
    since = time.monotonic()
    build.communicate()
    for p in sleeps:
        wait_for(lambda: proc_state(p) in ("Z", "X", "gone"), 10, f"{marker} to die")
    print(f"\nbuild killed during %post ({'user, --fakeroot' if pw else 'root'}): "
          f"its processes gone after {(time.monotonic() - since) * 1000:.0f} ms")


def test_build_tmpdir_full(install, busybox_sif, builder, fault_dir):
    """A definition build whose --tmpdir (where its rootfs grows) fills up in %post: one line
    naming the section and the error, the tmpdir left empty, the output never written."""
    pw, out = builder
    tmp = fault_dir / f"tmpdir-{'user' if pw else 'root'}"
    tmp.mkdir()
    opts = "size=4m,mode=0755" + (f",uid={pw.pw_uid},gid={pw.pw_gid}" if pw else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "hpccont-full", str(tmp)], check=True)
    try:
        deffile = out / "fill.def"
        deffile.write_text(f"Bootstrap: localimage\nFrom: {busybox_sif}\n%post\n"
                           "  dd if=/dev/zero of=/fill bs=64k count=256\n")
        deffile.chmod(0o644)
        build = _build(install, pw, *(["--fakeroot"] if pw else []), "--tmpdir", tmp,
                       out / "fill.sif", deffile)
        _, err = build.communicate(timeout=120)
        assert build.returncode != 0 and "Traceback" not in err, err
        errors = [line for line in err.splitlines() if "%post failed" in line]
        assert len(errors) == 1 and "No space left on device" in errors[0], err
        assert list(tmp.iterdir()) == []
        assert not (out / "fill.sif").exists()
        assert not [p for p in out.iterdir() if p.name.startswith(".")]
    finally:
        subprocess.run(["umount", str(tmp)], check=True)
        tmp.rmdir()
    print(f"\nbuild --tmpdir full ({'user' if pw else 'root'}): {errors[0][-90:]}")
