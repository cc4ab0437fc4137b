"""The image server's caching adapter (launcher/fusecache.c), preloaded into squashfuse_ll.

Real squashfuse_ll on real kernel FUSE mounts of a squashfs made here: the tree it serves with
the adapter is compared with the tree it serves without, entry by entry; FUSE round trips are
counted with the kernel's own ``fuse:fuse_request_send`` tracepoint, in a tracing instance of
this test's own, filtered to one connection (root only).  Then the runtime: the server that
``hpccont exec`` starts has it preloaded (the Python path and a cold recipe built in C), and
not when the site turns it off.  Last, its gzip decoder (launcher/inflate.c): zlib's answers
from libdeflate, in a process preloading it and in the real server.
"""
import contextlib
import errno
import hashlib
import os
import shutil
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest

import helpers
from hpccont import doctor

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")

TRACING = Path("/sys/kernel/tracing")
NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="mounts FUSE and traces as root")
# The round trips the adapter takes off a second pass over the same tree
CACHED_OPS = ("FUSE_OPEN", "FUSE_RELEASE", "FUSE_OPENDIR", "FUSE_READDIR", "FUSE_RELEASEDIR",
              "FUSE_READLINK")


@pytest.fixture(scope="module")
def adapter(install):
    if install["fusecache"] is None:
        pytest.skip("no C compiler or no libfuse3 headers (libfuse3-dev): adapter not built")
    return str(install["fusecache"])


@pytest.fixture(scope="module")
def server():
    path = shutil.which("squashfuse_ll")
    if path is None:
        pytest.skip("squashfuse_ll not installed")
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """A squashfs with what a software tree holds: many small files, a big one spanning
    blocks, links of every sort, a directory longer than one READDIR, hard links, an empty
    file, a FIFO, xattrs."""
    root = tmp_path_factory.mktemp("fusecache-tree") / "tree"
    (root / "pkg" / "sub").mkdir(parents=True)
    for i in range(700):        # well over one 4 KiB READDIR reply of names
        (root / "pkg" / f"module_{i:04d}.py").write_text(f"VALUE = {i}\n" * (i % 7 + 1))
    (root / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (root / "empty").write_bytes(b"")
    (root / "pkg" / "sub" / "deep.txt").write_text("deep\n")
    os.symlink("pkg/sub/deep.txt", root / "rel-link")
    os.symlink("/pkg/module_0001.py", root / "abs-link")
    os.symlink("nowhere", root / "dangling")
    os.symlink("sub", root / "pkg" / "dir-link")
    os.link(root / "big.bin", root / "hard.bin")
    os.mkfifo(root / "fifo")
    try:
        os.setxattr(root / "empty", "user.note", b"kept")
    except OSError:
        pass                    # the filesystem under tmp has no user xattrs: compared anyway
    out = root.parent / "tree.sqsh"
    subprocess.run(["mksquashfs", str(root), str(out), "-noappend", "-quiet", "-no-progress",
                    "-comp", "zstd"], check=True, stdout=subprocess.DEVNULL)
    return out


@contextlib.contextmanager
def served(server: str, image: Path, where: Path, preload: str = ""):
    """``image`` served by squashfuse_ll at ``where`` (with ``preload`` as its LD_PRELOAD);
    yields (mount point, FUSE connection number, the server process)."""
    where.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if preload:
        env["LD_PRELOAD"] = preload
    # read-only, as the runtime mounts images (MS_RDONLY): with no opens, the kernel alone
    # refuses writing
    proc = subprocess.Popen([server, "-f", "-o", "ro", str(image), str(where)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not helpers.mounts_mentioning(f" {where} "):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "squashfuse_ll did not mount"
            time.sleep(0.02)
        yield where, os.minor(os.stat(where).st_dev), proc
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(where)], capture_output=True)
        proc.wait(timeout=20)
        assert not helpers.mounts_mentioning(f" {where} ")


def snapshot(root: Path) -> dict:
    """Everything a reader can see of the tree: per entry its type, mode, size, links, times,
    link target, xattrs, content digest, and each directory's names in order."""
    seen = {}
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        seen[rel + "/"] = ("listing", sorted(os.listdir(dirpath)))
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            entry = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size,
                     st.st_nlink, st.st_mtime_ns, st.st_uid, st.st_gid]
            if stat.S_ISLNK(st.st_mode):
                entry.append(os.readlink(p))
            else:
                entry.append(sorted((a, os.getxattr(p, a)) for a in os.listxattr(p)))
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    entry.append(hashlib.sha256(f.read()).hexdigest())
            seen[os.path.join(rel, name)] = tuple(map(str, entry))
    return seen


def touch_everything(root: Path) -> None:
    """Open and read every file, list every directory, read every link (a program's start)."""
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                os.readlink(p)
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    f.read(4096)


@contextlib.contextmanager
def fuse_trace(connection: int):
    """Counts of FUSE requests sent on ``connection`` while the block runs: a tracing
    instance of our own, so no other tracer is disturbed."""
    if not (TRACING / "instances").is_dir():
        # a fresh machine may not have tracefs mounted where systemd would mount it
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACING)], capture_output=True)
    if not os.access(TRACING / "instances", os.W_OK):
        pytest.skip("no writable tracefs at /sys/kernel/tracing")
    if not (TRACING / "events" / "fuse" / "fuse_request_send").is_dir():
        pytest.skip("kernel without the fuse:fuse_request_send tracepoint")
    inst = TRACING / "instances" / f"hpccont-fusecache-{uuid.uuid4().hex[:8]}"
    inst.mkdir()
    counts: dict = {}
    event = inst / "events" / "fuse" / "fuse_request_send"
    try:
        (event / "filter").write_text(f"connection == {connection}\n")
        (event / "enable").write_text("1\n")
        (inst / "tracing_on").write_text("1\n")
        yield counts
        (inst / "tracing_on").write_text("0\n")
        for line in (inst / "trace").read_text().splitlines():
            if "opcode" in line and "(" in line:
                op = line.split("(", 1)[1].split(")", 1)[0]
                counts[op] = counts.get(op, 0) + 1
    finally:
        (event / "enable").write_text("0\n")
        inst.rmdir()


@NEEDS_ROOT
def test_the_same_tree_with_and_without_it(server, adapter, image, tmp_path):
    """Every name, type, mode, size, link count, time, link target, xattr and byte is what
    squashfuse_ll serves alone, first pass and again once cached."""
    with served(server, image, tmp_path / "plain") as (plain, _, _), \
            served(server, image, tmp_path / "cached", adapter) as (cached, _, _):
        want = snapshot(plain)
        assert len(want) > 700 and any(v[0] == "listing" for v in want.values())
        assert snapshot(cached) == want
        assert snapshot(cached) == want         # again, from the kernel's caches
        assert os.readlink(cached / "pkg" / "dir-link") == "sub"
        assert (cached / "pkg" / "dir-link" / "deep.txt").read_text() == "deep\n"
        for p in (plain, cached):
            with pytest.raises(OSError) as e:
                open(p / "empty", "r+b")
            assert e.value.errno == errno.EROFS


@NEEDS_ROOT
def test_a_second_pass_makes_no_open_listing_or_link_round_trips(server, adapter, image,
                                                                 tmp_path):
    """With the adapter, reading the tree again sends no OPEN/RELEASE, OPENDIR/READDIR/
    RELEASEDIR or READLINK; squashfuse_ll alone sends them every time (what this test
    would see if the adapter did nothing)."""
    seen = {}
    for name, preload in (("plain", ""), ("cached", adapter)):
        with served(server, image, tmp_path / name, preload) as (where, conn, _):
            touch_everything(where)
            with fuse_trace(conn) as counts:
                touch_everything(where)
            seen[name] = counts
    plain, cached = seen["plain"], seen["cached"]
    assert all(plain.get(op, 0) > 0 for op in CACHED_OPS), plain
    assert plain["FUSE_OPEN"] >= 700, plain
    assert not any(cached.get(op, 0) for op in CACHED_OPS), cached


@NEEDS_ROOT
def test_handles_come_back_after_the_kernel_forgets(server, adapter, image, tmp_path):
    """Evicting the kernel's inodes (each sends a FORGET, which the tracepoint does not show)
    makes the adapter give the server its handles back; the next pass looks every entry up
    again (so they were forgotten) and reads the same bytes through new handles, from the
    same server."""
    with served(server, image, tmp_path / "cached", adapter) as (where, conn, proc):
        want = snapshot(where)
        os.sync()
        try:
            Path("/proc/sys/vm/drop_caches").write_text("2\n")
        except OSError as e:
            pytest.skip(f"cannot drop the kernel's caches here: {e.strerror}")
        with fuse_trace(conn) as counts:
            again = snapshot(where)
        assert counts.get("FUSE_LOOKUP", 0) > 700, counts
        assert again == want
        assert proc.poll() is None



# -- gzip blocks by libdeflate (launcher/inflate.c) ------------------------------------------

NEEDS_LIBDEFLATE = pytest.mark.skipif(not doctor._loadable(doctor.LIBDEFLATE),
                                      reason=f"no {doctor.LIBDEFLATE} (Debian: libdeflate0)")

# In a process that preloads the adapter, as the server does: its uncompress() and libz's own,
# on the same inputs (whole, a buffer one byte short, a flipped byte, a truncated stream).
UNCOMPRESS_PROBE = r"""
import ctypes, json, os, zlib
libz = ctypes.CDLL("libz.so.1", mode=os.RTLD_NOW | ctypes.RTLD_GLOBAL)
data = b"".join(b"line %d of a module\n" % i for i in range(20000))
comp = zlib.compress(data, 9)
bad = bytearray(comp); bad[len(bad) // 2] ^= 0xFF
cases = ((comp, len(data)), (comp, len(data) - 1), (bytes(bad), len(data)), (comp[:-10], len(data)))
def call(fn, src, size):
    out = ctypes.create_string_buffer(size)
    n = ctypes.c_ulong(size)
    rc = fn(out, ctypes.byref(n), src, ctypes.c_ulong(len(src)))
    return [rc, n.value if rc == 0 else None, out.raw[:n.value] == data if rc == 0 else None]
ours = [call(ctypes.CDLL(None).uncompress, *c) for c in cases]
theirs = [call(libz.uncompress, *c) for c in cases]
maps = open("/proc/self/maps").read()
print(json.dumps({"ours": ours, "zlib": theirs, "libdeflate": "libdeflate" in maps}))
"""


@NEEDS_LIBDEFLATE
def test_uncompress_gives_zlibs_answers(adapter):
    """The adapter's uncompress() returns what zlib's does, byte for byte and error for error,
    and it is libdeflate that decoded (mapped in once the first block came); without the
    preload nothing maps libdeflate (what this test would see if the adapter fell through)."""
    import json
    import sys
    seen = {}
    for name, preload in (("preloaded", adapter), ("plain", "")):
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        if preload:
            env["LD_PRELOAD"] = preload
        r = subprocess.run([sys.executable, "-c", UNCOMPRESS_PROBE], env=env,
                           capture_output=True, text=True, timeout=60, check=True)
        seen[name] = json.loads(r.stdout)
    ours = seen["preloaded"]
    assert ours["libdeflate"] and not seen["plain"]["libdeflate"]
    assert ours["ours"] == ours["zlib"]
    assert ours["ours"][0][0] == 0 and ours["ours"][0][2] is True, ours
    assert all(rc != 0 for rc, _, _ in ours["ours"][1:]), ours


@pytest.fixture(scope="module")
def gzip_image(tmp_path_factory):
    """A gzip squashfs (Apptainer's default) of files spanning many blocks, compressible and
    not, and the same image with one byte of its first data block flipped."""
    root = tmp_path_factory.mktemp("inflate-tree") / "tree"
    root.mkdir()
    (root / "text.txt").write_bytes(b"".join(b"row %d: %s\n" % (i, b"x" * (i % 50))
                                             for i in range(60000)))
    (root / "random.bin").write_bytes(os.urandom(700 * 1024 + 5))
    shutil.copy2(helpers.BUSYBOX, root / "busybox")
    out = root.parent / "gzip.sqsh"
    subprocess.run(["mksquashfs", str(root), str(out), "-noappend", "-quiet", "-no-progress",
                    "-comp", "gzip"], check=True,
                   stdout=subprocess.DEVNULL)
    bad = root.parent / "gzip-bad.sqsh"
    raw = bytearray(out.read_bytes())
    raw[96 + 2000] ^= 0xFF      # data blocks follow the 96-byte superblock
    bad.write_bytes(bytes(raw))
    return out, bad


def _chunks(root: Path) -> dict:
    """Per file, each 128 KiB chunk's digest, or the errno reading it gave."""
    out = {}
    for name in sorted(os.listdir(root)):
        fd = os.open(root / name, os.O_RDONLY)
        try:
            size, got = os.fstat(fd).st_size, []
            for off in range(0, size, 128 * 1024):
                try:
                    got.append(hashlib.sha256(os.pread(fd, 128 * 1024, off)).hexdigest()[:16])
                except OSError as e:
                    got.append(errno.errorcode[e.errno])
            out[name] = got
        finally:
            os.close(fd)
    return out


@NEEDS_ROOT
@NEEDS_LIBDEFLATE
def test_gzip_images_are_served_the_same_through_libdeflate(server, adapter, gzip_image,
                                                            tmp_path):
    """A gzip image served with the adapter: every byte as squashfuse_ll alone serves it, and
    the server has libdeflate mapped (so it decoded them); a corrupt block gives the same
    error, in the same place, with and without it, and the server goes on serving."""
    good, bad = gzip_image
    for image in (good, bad):
        with served(server, image, tmp_path / f"plain-{image.stem}") as (plain, _, _), \
                served(server, image, tmp_path / f"ours-{image.stem}", adapter) \
                as (ours, _, proc):
            want = _chunks(plain)
            assert _chunks(ours) == want
            assert "libdeflate" in Path(f"/proc/{proc.pid}/maps").read_text()
            assert proc.poll() is None
            errors = [c for chunks in want.values() for c in chunks if c == "EIO"]
            if image == bad:
                assert errors, want          # the flipped byte did land in a data block
            else:
                assert not errors and (ours / "text.txt").read_bytes() == \
                    (plain / "text.txt").read_bytes()


def _servers_of(fragment: str) -> list:
    return [pid for pid, cmd in helpers.fuse_processes(fragment) if "squashfuse_ll" in cmd]


def _preload_of(pid: int) -> str:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next((e[11:].decode() for e in env if e.startswith(b"LD_PRELOAD=")), "")


def _held(argv, env, image: Path, user) -> tuple:
    """Start ``argv`` as ``user`` (a container sleeping), return (its process, its image
    server's pid)."""
    proc = subprocess.Popen(argv, env=env, user=user.pw_uid, group=user.pw_gid,
                            extra_groups=[], cwd="/", stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = [p for p in _servers_of(str(image)) if os.getsid(p) == proc.pid]
        if pids:
            return proc, pids[0]
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no image server appeared")


def _stop(proc) -> None:
    os.killpg(proc.pid, 9)
    proc.wait(timeout=30)


@NEEDS_ROOT
def test_the_runtime_preloads_it_into_the_image_server(install, adapter, busybox_sif,
                                                       test_user, shared_tmp):
    """``hpccont exec`` as the test user: its squashfuse_ll has the adapter (installed beside
    the entry point) first in LD_PRELOAD, the user's own preload after it; with
    ``runtime.fuse_cache: false`` it has none."""
    base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": test_user.pw_dir,
            "USER": test_user.pw_name, "LANG": "C.UTF-8"}
    off = shared_tmp / "off.yaml"
    off.write_text("runtime:\n  fuse_cache: false\n")
    off.chmod(0o644)
    argv = [install["hpccont"], "exec", "--no-share", str(busybox_sif), "sleep", "60"]
    for env, want in ((base, adapter), ({**base, "LD_PRELOAD": "libm.so.6"},
                                        f"{adapter} libm.so.6"),
                      ({**base, "HPCCONT_CONFIG": str(off)}, "")):
        proc, pid = _held(argv, env, busybox_sif, test_user)
        try:
            assert _preload_of(pid) == want
        finally:
            _stop(proc)
    assert not _servers_of(str(busybox_sif))


@NEEDS_ROOT
def test_a_cold_recipe_preloads_it_too(fast, busybox_sif, test_user, shared_tmp):
    """The recipe the first launch records carries the adapter (field P); the launch built
    from it in C, with no Python behind the launcher, starts the server with it preloaded."""
    adapter = fast["py"] / "hpccont-fusecache.so"
    if not adapter.exists():
        pytest.skip("no C compiler or no libfuse3 headers (libfuse3-dev): adapter not built")
    image = helpers.private_copy(busybox_sif, shared_tmp / "img.sif")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": test_user.pw_dir,
           "USER": test_user.pw_name, "HPCCONT_SHARE": "0"}
    first = subprocess.run([str(fast["dir"] / "hpccont"), "exec", str(image), "true"],
                           env=env, user=test_user.pw_uid, group=test_user.pw_gid,
                           extra_groups=[], cwd="/", capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    from hpccont.runtime.recipe import decode
    recipes = [p for p in Path(f"/tmp/hpccont-{test_user.pw_uid}").glob("cold-*")
               if str(image).encode() in p.read_bytes()]
    assert len(recipes) == 1
    head, rest = recipes[0].read_bytes().split(b"\n", 1)
    assert decode(rest[int(head.split()[1]):])["P"] == [str(adapter)]   # after the key
    proc, pid = _held([str(fast["strict"] / "hpccont"), "exec", str(image), "sleep", "60"],
                      env, image, test_user)
    try:
        assert _preload_of(pid) == str(adapter)
    finally:
        _stop(proc)


def test_which_servers_get_it(tmp_path, monkeypatch):
    """Only squashfuse_ll (the high-level server's operation table is libfuse's own), only
    with runtime.fuse_cache on, only from beside the entry point, and only when it is there."""
    import sys
    from hpccont.config import defaults
    from hpccont.runtime import apply
    entry = tmp_path / "hpccont"
    entry.write_text("")
    monkeypatch.setattr(sys, "argv", [str(entry)])
    cfg = defaults()
    assert apply.image_server_cache(cfg) == ""          # not installed there
    (tmp_path / apply.FUSE_CACHE).write_bytes(b"")
    assert apply.image_server_cache(cfg) == str(tmp_path / apply.FUSE_CACHE)
    cfg["runtime"]["squashfuse"] = "squashfuse"
    assert apply.image_server_cache(cfg) == ""
    cfg["runtime"]["squashfuse"] = "squashfuse_ll"
    cfg["runtime"]["fuse_cache"] = False
    assert apply.image_server_cache(cfg) == ""
