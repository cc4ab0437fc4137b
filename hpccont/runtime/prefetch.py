"""Warm a freshly mounted image's page cache with the files the command is about to execute.

Why: a new squashfuse mount starts with an empty page cache, and ``execve`` then reads the
program through page faults.  The kernel's read-around windows (128 KiB, centred on the fault)
do not line up with squashfs's 128 KiB compressed blocks, and squashfuse keeps almost no
decompressed blocks, so most blocks are decompressed two or three times: a busybox
``/bin/true`` costs 22 FUSE reads and ~11 ms cold, ~3 ms warm.  Reading the same files
front to back in block-aligned chunks decompresses every block once, and doing it in a child
process while the parent finishes the mounts moves that work onto another CPU.  The pages stay
cached for the exec: squashfuse opens files with ``keep_cache`` and the kernel squashfs (root
path) has an ordinary page cache.

What is read: the command (looked up on the container's PATH), a script's ``#!`` interpreter, each ELF program's
interpreter and the libraries it names (DT_NEEDED, looked up in the usual library directories), within a byte budget so that a
huge program is not read whole.  Everything is best effort: a file that cannot be found or
parsed is simply not read, and the exec reports any real problem.

The child resolves paths through a directory descriptor of the image root, never through path
strings: the parent may pivot_root while the child is still reading, and pivot_root moves the
root of every process of the namespace, the child's included.
"""
from __future__ import annotations

import os

from ..rootpath import open_in_root

CHUNK = 128 * 1024               # squashfs's default block size: one decompression per read
FILE_BUDGET = 8 * 1024 * 1024    # bytes read of one file at most
TOTAL_BUDGET = 24 * 1024 * 1024  # bytes read in all at most
MAX_FILES = 24

# Library directories searched for DT_NEEDED names, most specific first (Debian multiarch,
# then the Red Hat and generic layouts).
MULTIARCH = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu",
             "ppc64le": "powerpc64le-linux-gnu", "riscv64": "riscv64-linux-gnu"}


def library_dirs(machine: str) -> tuple[str, ...]:
    triplet = MULTIARCH.get(machine, f"{machine}-linux-gnu")
    return (f"/lib/{triplet}", f"/usr/lib/{triplet}", "/lib64", "/usr/lib64", "/lib",
            "/usr/lib", "/usr/local/lib")


def targets(argv0: str, path_env: str) -> list[list[str]]:
    """What to read: each entry lists alternatives of which the first found is read (a bare
    command name becomes one candidate per directory of the container's PATH: the child looks,
    as it sees the image).  Not /bin/sh: the env scripts rarely need it (envscripts.py)."""
    if argv0.startswith("/"):
        return [[argv0]]
    if argv0 and "/" not in argv0:
        return [[f"{d}/{argv0}" for d in path_env.split(":") if d.startswith("/")]]
    return []


def start(root: str, wanted: list[list[str]]) -> int:
    """Fork a child that reads ``wanted`` (see targets) inside the image mounted at ``root``;
    returns its pid, or 0 when nothing was started."""
    if not wanted:
        return 0
    try:
        rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return 0
    parent = os.getpid()
    try:
        pid = os.fork()
    except OSError:          # e.g. the job's process limit: the reader is only an optimisation
        os.close(rootfd)
        return 0
    if pid == 0:
        try:
            from . import kernel
            kernel.prctl(kernel.PR_SET_PDEATHSIG, kernel.SIGKILL)
            if os.getppid() == parent:
                Reader(rootfd).run(wanted)
        except BaseException:
            pass
        os._exit(0)
    os.close(rootfd)
    return pid


def resolved(root: str, wanted: list[list[str]]) -> list[str]:
    """The container paths, every link resolved, of the files the reader reads for ``wanted``,
    in its order: a recipe that repeats the launch (runtime/cold.py) has them read in C."""
    from ..rootpath import resolve
    found: list[str] = []
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        Reader(rootfd).run(wanted, lambda path: found.append(
            resolve(root, path)[len(root.rstrip("/")):] or "/"))
    finally:
        os.close(rootfd)
    return found


def finish(pid: int) -> None:
    """Wait for the reader, so that it is not left behind as a child of the command."""
    if pid:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


class Reader:
    """Reads files of an image tree through a descriptor of its root."""

    def __init__(self, rootfd: int):
        self.rootfd = rootfd
        self.budget = TOTAL_BUDGET
        self.seen: set[tuple[int, int]] = set()
        self.buf = bytearray(CHUNK)
        self.libdirs = library_dirs(os.uname().machine)

    def run(self, wanted: list[list[str]], collect=None) -> None:
        """Read what ``wanted`` names; with ``collect``, call it with each path instead (and
        only look at each file's head)."""
        queue = list(wanted)
        while queue and self.budget > 0 and len(self.seen) < MAX_FILES:
            for path in queue.pop(0):
                fd = self.open(path)
                if fd is None:
                    continue
                try:
                    if self.first_time(fd):
                        if collect is None:
                            queue += self.read_file(fd)
                        else:
                            collect(path)
                            queue += self.deps(fd, os.pread(fd, 4096, 0))
                            self.budget -= min(FILE_BUDGET, self.budget, os.fstat(fd).st_size)
                finally:
                    os.close(fd)
                break

    def open(self, path: str) -> int | None:
        """A descriptor of container path ``path``, symlinks followed inside the image; None
        when it is missing or not a regular file."""
        try:
            # As the kernel would look it up after a chroot there; O_NONBLOCK: a FIFO where
            # the program should be must not stop us at open.
            fd = open_in_root(self.rootfd, path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return None
        if (os.fstat(fd).st_mode & 0o170000) != 0o100000:
            os.close(fd)
            return None
        return fd

    def first_time(self, fd: int) -> bool:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True

    def read_file(self, fd: int) -> list[list[str]]:
        """Read the file in block-aligned chunks; returns the ELF dependencies found in it."""
        head = os.pread(fd, 4096, 0)
        deps = self.deps(fd, head)
        limit = min(FILE_BUDGET, self.budget)
        offset = 0
        while offset < limit:
            n = os.preadv(fd, [self.buf], offset)
            if n <= 0:
                break
            offset += n
        self.budget -= offset
        return deps

    def deps(self, fd: int, head: bytes) -> list[list[str]]:
        """What executing this file reads next: a script's interpreter, or an ELF program's
        interpreter and libraries."""
        if head[:2] == b"#!":
            words = head[2:].split(b"\n", 1)[0].split()
            return [[words[0].decode(errors="replace")]] if words else []
        try:
            interp, needed = parse_elf(fd, head)
        except (ValueError, IndexError, UnicodeDecodeError, OSError):
            return []
        out = [[interp]] if interp else []
        for name in needed:
            out.append([name] if "/" in name else [f"{d}/{name}" for d in self.libdirs])
        return out


def parse_elf(fd: int, head: bytes) -> tuple[str, list[str]]:
    """(PT_INTERP path, DT_NEEDED names) of a 64- or 32-bit ELF file; ("", []) otherwise."""
    from .. import elf      # only the reader child parses ELF: not the launch's own imports
    dyn = elf.read_dynamic(elf.fd_reader(fd), head)
    return (dyn.interp, dyn.needed) if dyn else ("", [])


