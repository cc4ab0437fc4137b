"""What a killed build leaves behind, and how the next build finds and removes it.

``kill -9`` of ``hpccont build`` (an OOM kill, a job hitting its time limit with KILL) runs no
cleanup: its work directory (next to the output, or under --tmpdir) and its partial output stay,
often hundreds of megabytes.  So their names carry the host and the PID of the build that made
them (``tag``), and a build that starts removes, in the directories it writes to, those of a
build of the same user on this host whose process is gone.  Only this host's: on a shared
filesystem another node's PID means nothing here.  A PID in use again, by anything, keeps its
files (they go once it is free): never guess.

The build's own children (mksquashfs, unsquashfs, cp, the fakeroot child) die with it
(PR_SET_PDEATHSIG, ``die_with_parent``): otherwise mksquashfs keeps packing into a directory
nobody will use.
"""
from __future__ import annotations

import os
import shutil
import stat

WORK_PREFIX = "hpccont-build-"
PARTIAL_MARK = ".partial-"
PR_SET_PDEATHSIG, SIGKILL = 1, 9


def tag() -> str:
    """``HOST-PID`` of this build (the host name may itself contain dashes: the PID is last)."""
    return f"{os.uname().nodename}-{os.getpid()}"


def work_prefix(hidden: bool) -> str:
    """mkdtemp's prefix for a work directory: ``[.]hpccont-build-HOST-PID-``."""
    return f"{'.' if hidden else ''}{WORK_PREFIX}{tag()}-"


def partial_name(name: str) -> str:
    return f".{name}{PARTIAL_MARK}{tag()}"


def _owner_tag(entry: str) -> str | None:
    """The ``HOST-PID`` an entry's name carries, if it is a build's work dir or partial."""
    if PARTIAL_MARK in entry and entry.startswith("."):
        return entry.rsplit(PARTIAL_MARK, 1)[1]
    bare = entry[1:] if entry.startswith(".") else entry
    if bare.startswith(WORK_PREFIX):
        parts = bare[len(WORK_PREFIX):].rsplit("-", 1)     # drop mkdtemp's random suffix
        return parts[0] if len(parts) == 2 else None
    return None


def _dead_here(owner: str) -> bool:
    host, _, pid = owner.rpartition("-")
    if host != os.uname().nodename or not pid.isdigit():
        return False
    return not os.path.exists(f"/proc/{pid}")


def sweep(directory: str) -> list:
    """Remove the work directories and partial outputs in ``directory`` of this user's builds
    on this host that were killed; returns what was removed.  Errors leave things as they are."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    removed = []
    me = os.geteuid()
    for entry in entries:
        owner = _owner_tag(entry)
        if owner is None or not _dead_here(owner):
            continue
        path = os.path.join(directory, entry)
        try:
            st = os.lstat(path)
            if st.st_uid != me:
                continue
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(path)          # fd-based, never follows a symlink inside
            else:
                os.unlink(path)
            removed.append(path)
        except OSError:
            continue
    return removed


def die_with_parent() -> None:
    """In a child (subprocess ``preexec_fn``, after fork): SIGKILL when the build dies."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)
