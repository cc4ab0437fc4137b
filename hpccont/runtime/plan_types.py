"""The data a launch is made of.  Computed first, applied second.

A LaunchPlan is plain data: tests compare plans without privileges, and ``--dry-run`` prints
one.  ``runtime/apply.py`` turns a plan into system calls (``runtime/join.py`` enters a plan's
container that a keeper already holds; both go through ``runtime/kernel.py``).
"""
from __future__ import annotations

from ..image.source import ImageSource  # noqa: F401 (part of a plan; defined by the image layer)
from ..record import factory, record


@record
class Mount:
    """One mount in the container, applied in list order.

    kind:
      "bind"   recursive bind of host path ``source`` at ``target`` (a dir or a file)
      "tmpfs"  a fresh tmpfs at ``target``
      "file"   ``content`` written to a private file and bound over ``target``
      "dev"    a device node from the host bound at ``target`` (same as bind, but kept nodev-free)
      "fs"     a fresh kernel filesystem of type ``source`` (devpts, mqueue) with ``options``
      "symlink" a symbolic link at ``target`` whose text is ``source`` (in a fresh tmpfs)
      "passwd" the container's /etc/passwd: the image's entries plus the caller's (identity.py)
      "group"  the same for /etc/group
    target is always an absolute path inside the container.
    """
    kind: str
    target: str
    source: str = ""
    readonly: bool = False
    optional: bool = False        # skip silently when the source does not exist
    why: str = ""                 # shown by --dry-run: "default", "user -B", "nv: libcuda.so.1"...
    content: str | None = None
    options: str = ""             # mount data of "tmpfs" and "fs" ("mode=1777", devpts options)


@record
class HostAdditions:
    """What a host adapter (nvidia, mpi) adds to a plan.  Merged by the planner, never applied directly."""
    mounts: list[Mount] = factory(list)
    env: dict[str, str] = factory(dict)
    ld_library_path: list[str] = factory(list)   # container paths, prepended in order
    path: list[str] = factory(list)              # container paths, prepended to PATH
    warnings: list[str] = factory(list)

    def extend(self, other: "HostAdditions") -> None:
        self.mounts += other.mounts
        self.env.update(other.env)
        self.ld_library_path += other.ld_library_path
        self.path += other.path
        self.warnings += other.warnings


@record
class Identity:
    uid: int
    gid: int
    user: str
    home: str
    shell: str = "/bin/sh"
    gecos: str = ""
    groups: list[int] = factory(list)


# Plan fields that make namespaces or limits of the launch's own: such a container is never
# shared (runtime/share.py) nor replayed from a recipe (runtime/cold.py).
PRIVATE_TO_LAUNCH = ("pid", "ipc", "uts", "net", "hostname", "cgroup")


@record
class LaunchPlan:
    image: ImageSource
    mode: str                       # "rootless" (user namespaces + squashfuse) | "root" (loop + kernel mount)
    identity: Identity
    mounts: list[Mount]
    env: dict[str, str]
    cwd: str                        # inside the container
    argv: list[str]                 # argv[0] is looked up on the container's PATH at exec time
    env_overrides: dict[str, str] = factory(dict)   # re-applied after image env scripts
    env_dirs: list[str] = factory(lambda: ["/.singularity.d/env"])   # *.sh sourced in order
    writable_tmpfs: bool = False
    join: str | None = None
    warnings: list[str] = factory(list)
    # Apptainer's process flags (runtime/apply.py "Namespaces"): namespaces beyond user+mount,
    # an init as PID 1 under --pid (unless --no-init), the host name, the umask, the action
    # (run/test fall back as Apptainer's action script does), the message level (-q/-s).
    pid: bool = False
    init: bool = True
    ipc: bool = False
    uts: bool = False
    hostname: str | None = None
    net: bool = False
    umask: int | None = None
    action: str = "exec"
    message_level: int = 1
    cgroup: dict | None = None        # {"path": DIR, "files": {name: value}} to join first
    # Persistent layers (runtime/writable.py plans them, runtime/overlay.py mounts them):
    # {"kind": "dir"|"ext3", "path", "offset", "size", "readonly", "why"}, top layer first.
    overlays: list = factory(list)
    writable: bool = False            # --writable (a sandbox of the caller's, or an overlay)
    fakeroot: bool = False            # --fakeroot: root inside through the user namespace
