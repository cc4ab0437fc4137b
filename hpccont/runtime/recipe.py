"""The launch recipe format: what Python planned for a launch that joins a container, as data a
C applier executes (spank_plugin/recipe.c) without an interpreter.

Three producers: ``hpccont slurm prepare`` (one recipe per step and node, kept by slurmstepd
for its tasks: schedulers/slurm/recipe.py), the shared-mount path of ``hpccont exec``
(runtime/share.py: one recipe per launch key, read by launcher/fast.c) and a launch with a
container of its own (runtime/cold.py: the whole build, applied by launcher/cold.c).  Entering
and exec'ing is one applier (spank_plugin/recipe.c) for all three.
"""
from __future__ import annotations

# A sequence of NUL-terminated fields, each a one-byte tag and its payload.
TAGS = {
    "m": "mode: rootless | root",
    "p": "keeper PID",
    "t": "keeper start time (/proc/PID/stat field 22: a reused PID does not match)",
    "h": "host working directory prepare saw (a task elsewhere falls back to the Python path)",
    "w": "working directory inside the container",
    "a": "argv prefix, one field per word (the env-script shell), before the task's argv",
    "K": "--cleanenv: keep only the 'k' names (payload empty)",
    "k": "name kept with --cleanenv",
    "u": "name removed from the task's environment",
    "U": "prefix: names starting with it are removed",
    "s": "NAME=VALUE set",
    "c": "name copied from the task's own environment after the 's' fields",
    "f": "state file removed when the step ends",
    "L": "lock file taken (exclusive) while entering, as runtime/join.py does",
    "G": "guests file held shared through the exec (the keeper waits for it to idle out)",
    "x": "exact: the 'a' words are the program and the 's' fields the whole environment, the "
         "shell rules (PS1, /bin/sh -> bash) already applied (payload empty)",
    "W": "the command class an exact recipe was made for (share.command_class); applied only "
         "to commands of that class",
    # A cold recipe (runtime/cold.py, launcher/cold.c) builds its container instead of joining
    # a keeper's: no 'p', 't', 'L' or 'G'; these, then the exec fields above.
    "B": "build: the caller's 'UID GID', mapped to root of the outer user namespace",
    "S": "staging directory (the tmpfs under which the image, overlay and root are mounted)",
    "T": "the staging tmpfs's mount data",
    "Q": "the image's FUSE server (absolute path)",
    "P": "the caching adapter preloaded into the server (apply.image_server_cache; absent: "
         "none)",
    "I": "the image file",
    "J": "offset of the squashfs in the image file",
    "Y": "the kernel overlay's mount data",
    "E": "remount the root read-only (not with --writable-tmpfs; payload empty)",
    "V": "the command the 'R' files were chosen for (read only for that command; absent: "
         "the image's runscript, test script or shell, read for any arguments)",
    "R": "a file the page-cache reader reads, as a container path with every link resolved",
    "M": "a mount, in order: kind (b bind, p proc, t tmpfs, f fs, l symlink, c content) and "
         "flags (r read-only, o optional, C clamp '..' at the root, x executable content)",
    "A": "an argument of the 'M' before it: bind SOURCE TARGET RESOLVED (the source as it "
         "resolved when planned), proc TARGET, tmpfs TARGET DATA, fs TYPE TARGET DATA, symlink "
         "TEXT TARGET, content NAME TARGET CONTENT",
}


def encode(fields) -> bytes:
    """(tag, payload) pairs -> recipe bytes; ValueError on a NUL in a payload."""
    out = []
    for tag, payload in fields:
        data = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else payload
        if b"\0" in data:
            raise ValueError(f"recipe field {tag!r} contains a NUL byte")
        out.append(tag.encode() + data + b"\0")
    return b"".join(out)


def decode(data: bytes) -> dict:
    """tag -> payloads in order (tests and debugging; the appliers parse it in C)."""
    out: dict = {}
    for f in data.split(b"\0")[:-1]:
        out.setdefault(f[:1].decode(), []).append(f[1:].decode("utf-8", "surrogateescape"))
    return out
