"""The page-cache reader (hpccont/runtime/prefetch.py): what it reads, how it resolves paths
inside an image, and that a real launch waits for it (no child of hpccont is left to the
command).  ELF facts are checked against readelf from binutils, on the host's own programs."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hpccont.rootpath import open_in_root
from hpccont.runtime import prefetch

HOST_TRUE = os.path.realpath(shutil.which("true") or "/bin/true")


def readelf(path: str) -> tuple[str, list[str]]:
    out = subprocess.run(["readelf", "-ld", path], capture_output=True, text=True,
                         check=True).stdout
    interp = re.search(r"Requesting program interpreter: ([^\]]+)\]", out)
    return (interp.group(1) if interp else "",
            re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out))


@pytest.mark.parametrize("program", [HOST_TRUE, os.path.realpath("/bin/busybox"),
                                     "/usr/bin/python3"])
def test_parse_elf_matches_readelf(program):
    program = os.path.realpath(program)
    if not os.path.exists(program):
        pytest.skip(f"{program} not installed")
    fd = os.open(program, os.O_RDONLY)
    try:
        got = prefetch.parse_elf(fd, os.pread(fd, 4096, 0))
    finally:
        os.close(fd)
    assert got == readelf(program)


def test_parse_elf_of_a_script_and_of_garbage(tmp_path):
    script = tmp_path / "s"
    script.write_bytes(b"#!/bin/sh\necho hi\n")
    fd = os.open(script, os.O_RDONLY)
    try:
        assert prefetch.parse_elf(fd, os.pread(fd, 4096, 0)) == ("", [])
    finally:
        os.close(fd)
    # a truncated ELF header is skipped by the reader, not fatal
    broken = tmp_path / "broken"
    broken.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 20)
    fd = os.open(broken, os.O_RDONLY)
    try:
        assert prefetch.Reader(fd).deps(fd, os.pread(fd, 4096, 0)) == []
    finally:
        os.close(fd)


def test_targets():
    assert prefetch.targets("/bin/true", "/usr/bin:/bin") == [["/bin/true"]]
    assert prefetch.targets("true", "/usr/bin:relative:/bin") == [["/usr/bin/true", "/bin/true"]]
    assert prefetch.targets("./here", "/bin") == []
    assert prefetch.targets("", "/bin") == []


def _tree(root: Path) -> Path:
    """An image tree with symlinks that would leave it if resolved on the host."""
    (root / "bin").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text("image passwd\n")
    (root / "bin/abs").symlink_to("/etc/passwd")            # absolute: means ROOT/etc/passwd
    (root / "bin/up").symlink_to("../../../../etc/passwd")  # .. stops at the image root
    (root / "bin/loop").symlink_to("loop")
    (root / "usr/bin/dir").symlink_to("/usr")
    return root


@pytest.mark.parametrize("path", ["/bin/abs", "/bin/up", "/usr/bin/dir/../etc/passwd",
                                  "bin/../etc/passwd"])
def test_walk_stays_inside_the_image(tmp_path, path):
    """/usr/bin/dir -> /usr, so dir/.. is the image's /, as after a chroot."""
    root = _tree(tmp_path / "root")
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        fd = open_in_root(rootfd, path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            assert os.read(fd, 100) == b"image passwd\n"
        finally:
            os.close(fd)
    finally:
        os.close(rootfd)


def test_reader_skips_what_is_not_a_regular_file(tmp_path):
    """A FIFO or a directory where a program should be is passed over, never waited on."""
    root = _tree(tmp_path / "root")
    os.mkfifo(root / "bin/fifo")
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        reader = prefetch.Reader(rootfd)
        reader.run([["/bin/fifo"], ["/bin"], ["/bin/abs"]])
    finally:
        os.close(rootfd)
    assert len(reader.seen) == 1      # only the regular file behind /bin/abs


@pytest.mark.parametrize("path", ["/bin/loop", "/nope", "/", "/etc/passwd/x"])
def test_walk_refuses(tmp_path, path):
    """What the reader cannot open as a regular file inside the image, it skips."""
    root = _tree(tmp_path / "root")
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        assert prefetch.Reader(rootfd).open(path) is None
    finally:
        os.close(rootfd)


def _copy_in(root: Path, host_path: str) -> Path:
    dest = root / host_path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        shutil.copy(os.path.realpath(host_path), dest)
    return dest


def _read_by(reader: prefetch.Reader, wanted) -> list:
    """Runs the reader; returns the host paths of the files it read, in order."""
    read = []
    original = reader.read_file

    def spy(fd):
        read.append(os.readlink(f"/proc/self/fd/{fd}"))
        return original(fd)
    reader.read_file = spy
    reader.run(wanted)
    return read


def test_reader_follows_shell_script_interpreter_and_libraries(tmp_path):
    """A script whose interpreter is a dynamic program: the reader goes script -> interpreter
    -> its ELF interpreter and libraries, each once, found in the image's library dirs."""
    root = tmp_path / "root"
    interp, needed = readelf(HOST_TRUE)
    prog = _copy_in(root, "/usr/bin/true")
    shutil.copy(HOST_TRUE, prog)
    script = root / "usr/bin/app"
    script.write_text("#!/usr/bin/true -x\n")
    dirs = prefetch.library_dirs(os.uname().machine)
    libdir = dirs[0]
    for name in needed:
        host = next(f"{d}/{name}" for d in dirs if os.path.exists(f"{d}/{name}"))
        (root / libdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.realpath(host), root / libdir.lstrip("/") / name)
    ld = _copy_in(root, interp)
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        reader = prefetch.Reader(rootfd)
        read = _read_by(reader, prefetch.targets("app", "/nothing:/usr/bin")
                           + [["/bin/sh"]] + prefetch.targets("/usr/bin/true", ""))
    finally:
        os.close(rootfd)
    expected = [str(script), str(prog), str(ld)] + [str(root / libdir.lstrip("/") / n)
                                                    for n in needed]
    assert sorted(read) == sorted(expected)       # /bin/sh is missing: skipped; true read once
    assert read[:2] == [str(script), str(prog)]
    total = sum(os.path.getsize(p) for p in expected)
    assert reader.budget == prefetch.TOTAL_BUDGET - total


def test_reader_budget(tmp_path, monkeypatch):
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin/big").write_bytes(os.urandom(3 * prefetch.CHUNK + 5))
    monkeypatch.setattr(prefetch, "FILE_BUDGET", 2 * prefetch.CHUNK)
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        reader = prefetch.Reader(rootfd)
        reader.run([["/bin/big"]])
    finally:
        os.close(rootfd)
    assert prefetch.TOTAL_BUDGET - reader.budget == 2 * prefetch.CHUNK


@pytest.mark.rootless
@pytest.mark.parametrize("who", ["root", "user"])
def test_launch_waits_for_the_reader(who, hpccont, hpccont_user, busybox_squashfs, shared_tmp):
    """The reader is a child of the launching process: it must be waited for before the exec,
    or the command would inherit it, as a zombie that a command which reaps nothing keeps.
    ``cat`` becomes the launching process and lists its children: only the FUSE server
    (rootless) may be there."""
    run = hpccont if who == "root" else hpccont_user
    r = run("exec", "--debug", busybox_squashfs, "cat", "/proc/thread-self/children",
            cwd=shared_tmp)
    assert r.returncode == 0, r.stderr
    assert "starting the page-cache reader" in r.stderr
    assert "waiting for the page-cache reader" in r.stderr
    assert len(r.stdout.split()) == (0 if who == "root" else 1), r.stdout


@pytest.mark.rootless
def test_prefetch_can_be_turned_off(hpccont, busybox_squashfs, shared_tmp, tmp_path):
    cfg = tmp_path / "hpccont.yaml"
    cfg.write_text("runtime:\n  prefetch: false\n")
    r = hpccont("exec", "--debug", busybox_squashfs, "true", cwd=shared_tmp,
                env={"HPCCONT_CONFIG": str(cfg)})
    assert r.returncode == 0, r.stderr
    assert "page-cache reader" not in r.stderr


def test_a_failed_fork_only_skips_the_reader(tmp_path, monkeypatch):
    """Under a process limit (ulimit -u in a job) the launch goes on without the reader."""
    def no_fork():
        raise BlockingIOError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(prefetch.os, "fork", no_fork)
    before = len(os.listdir("/proc/self/fd"))
    assert prefetch.start(str(tmp_path), [["/bin/true"]]) == 0
    assert len(os.listdir("/proc/self/fd")) == before      # the root descriptor is closed
