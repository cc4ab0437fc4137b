"""Cold recipes: a rootless launch with a container of its own, recorded so that the same
launch again is built without a Python interpreter (launcher/cold.c).

A launch that does not share its container (runtime/share.py) mounts everything itself at
every start; Python's start, imports and planning are then most of its cost.  The plan,
though, is a pure function of what the fast path's key holds (share.fast_material: the words
up to the image, the working directory, the ids, the stamps of the image, the site config,
/etc/passwd, /etc/group and the entry point, the whole environment).  So the first launch
records, next to the key, what apply.py did: the staging tmpfs, the image's FUSE server and offset, the overlay,
each mount in order with its flags, the identity files' contents, the files the page-cache
reader read, and, decided inside the container, the program and its environment after the
image's env scripts.  launcher/fast.c finds the recipe by the same key and replays it in C;
anything else (another key, no recipe, a host that changed under it) is planned here again.

What a key cannot vouch for is left to planning every time: whatever the host contributes
from its own state at planning time (--nv, --rocm, MPI bind mode: driver and library
discovery), root launches (kernel mounts, loop devices), writable and persistent overlays,
extra namespaces, cgroup limits, a umask, a verified image held by descriptor, and plans with
warnings (which the user must keep seeing).  Bind sources and the FUSE server are checked
again by the C side before it changes anything.
"""
from __future__ import annotations

import os

from . import pending
from .plan_types import PRIVATE_TO_LAUNCH
from .recipe import encode

# Request fields whose mounts come from the host's state at planning time.
HOST_STATE = ("nv", "rocm", "mpi")
# Plan fields with no place in a recipe (their launches are planned every time).
PRIVATE = ("join", "overlays", "writable", "fakeroot", "warnings") + PRIVATE_TO_LAUNCH
MOUNT_OPS = {"bind": "b", "dev": "b", "proc": "p", "tmpfs": "t", "fs": "f", "symlink": "l",
             "file": "c", "passwd": "c", "group": "c"}


def unrecordable(plan, cfg: dict, req, keeper: bool = False) -> str | None:
    """Why this launch cannot be repeated from a recipe, or None.  ``keeper``: the container
    is built for a keeper that others join (a Slurm step's, schedulers/slurm/template.py)."""
    if plan.mode != "rootless":
        return "root launches use kernel mounts"
    if req.dry_run or req.debug:
        return "--dry-run and --debug show the planning"
    for name in HOST_STATE:
        if getattr(req, name, None):
            return f"--{name} reads the host's state at every launch"
    for name in PRIVATE:
        if getattr(plan, name, None) and not (keeper and name == "join"):
            return f"{name} is planned at every launch"
    if plan.umask is not None:
        return "a --umask is applied by the Python path"
    img = plan.image
    if img.kind not in ("sif", "squashfs") or img.handle or img.fs_type != "squashfs":
        return "only squashfs images opened by path"
    if cfg["runtime"]["overlay"] != "kernel":
        return "fuse-overlayfs"
    for m in plan.mounts:
        if m.kind not in MOUNT_OPS:
            return f"a {m.kind} mount"
    return None


def describe(plan, cfg: dict, req) -> dict:
    """For --dry-run and --debug: whether this launch, run for real, would be recorded."""
    import copy
    real = copy.copy(req)
    real.dry_run = real.debug = False
    why = unrecordable(plan, cfg, real)
    if why is None and not launcher_installed():
        why = "no C launcher beside the entry point (hpccont-fast, make install)"
    return {"record": why is None} if why is None else {"record": False, "why": why}


def launcher_installed() -> bool:
    """Is the C launcher next to this entry point (``make install`` puts hpccont-fast there and
    links hpccont to it)?  Only it reads recipes: without it, recording would cost every
    launch ~3 ms for nothing."""
    from .apply import beside_entry_point
    return os.path.exists(beside_entry_point("hpccont-fast"))


def recorder(plan, cfg: dict, req) -> "Recorder | None":
    """A Recorder for this launch when the fast path could repeat it, else None (then
    launches waiting in fast.c for its recipe are let go at once: runtime/pending.py)."""
    rec = _recorder(plan, cfg, req)
    if rec is None:
        pending.release()
    return rec


def _recorder(plan, cfg: dict, req) -> "Recorder | None":
    if not launcher_installed() or unrecordable(plan, cfg, req) is not None:
        return None
    from .share import fast_inputs, fast_material
    fast = fast_inputs(req)
    if fast is None:
        return None
    from .join import state_dir
    try:
        d = state_dir(cfg)
        # fast.c looks in $XDG_RUNTIME_DIR/hpccont-UID and /tmp/hpccont-UID only, not in the
        # fallback of a pre-empted /tmp name: a recipe there would never be read
        if os.path.basename(d) != f"hpccont-{os.getuid()}":
            return None
        dir_fd = os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    return Recorder(fast_material(*fast), fast[3], os.getcwd(), dir_fd)


class Recorder:
    """Collects the build (before the pivot) and writes the recipe (inside the container)."""

    def __init__(self, material: bytes, cmd: list, host_cwd: str, dir_fd: int):
        self.material = material
        self.cmd = cmd
        self.host_cwd = host_cwd
        self.dir_fd = dir_fd
        self.build: list | None = None

    def capture(self, plan, cfg: dict, root: str) -> None:
        """Right after apply.setup: what it did, as recipe fields (None when it cannot be
        written down)."""
        self.build = build_of(plan, cfg, root, self.cmd)

    def write(self, plan, argv: list, env: dict) -> None:
        """Inside the container, once the exec is decided: the recipe, unless the exec is not
        "prefix + the command's words" (then the Python path stays the only one)."""
        try:
            if self.build is not None:
                from .share import exec_fields, write_recipe
                fields = exec_fields(plan, self.host_cwd, argv, env, self.cmd)
                if fields is not None:
                    write_recipe(self.dir_fd, "cold", self.material,
                                 self.build + [("m", plan.mode)] + fields)
        except (OSError, ValueError):
            pass             # no recipe: the next launch is planned again
        finally:
            os.close(self.dir_fd)


def build_of(plan, cfg: dict, root: str, cmd: list) -> list | None:
    """build_fields for the container apply.setup has just made at ``root`` (in this process's
    mount namespace, before the pivot); None when it cannot be written down.  Also how the
    Slurm step's keeper records its build (schedulers/slurm/template.py)."""
    from .apply import _image_server, _overlay_options, image_server_cache
    stage = os.path.dirname(root)
    try:
        return build_fields(plan, cfg, stage, _image_server(cfg), image_server_cache(cfg),
                            _overlay_options(f"{stage}/lower", stage), cmd)
    except (OSError, ValueError, UnicodeError):
        return None


def build_fields(plan, cfg: dict, stage: str, server: str, preload: str,
                 overlay_options: str, cmd: list) -> list:
    """The container's construction, in apply.setup's order (launcher/cold.c applies it)."""
    from . import prefetch
    img, ident = plan.image, plan.identity
    fields = [("B", f"{ident.uid} {ident.gid}"), ("S", stage),
              ("T", f"mode=0755,size={cfg['runtime']['tmp_size']}"), ("Q", server),
              ("I", img.path), ("J", str(img.offset)), ("Y", overlay_options)]
    if preload:              # apply.image_server_cache: the server's LD_PRELOAD
        fields.append(("P", preload))
    if not plan.writable_tmpfs:
        fields.append(("E", ""))
    if cfg["runtime"].get("prefetch", True):
        if plan.action == "exec":   # the program is the command's (run, test, shell: the image's)
            fields.append(("V", cmd[0].decode("utf-8", "surrogateescape") if cmd else ""))
        wanted = prefetch.targets(plan.argv[0] if plan.argv else "", plan.env.get("PATH", ""))
        fields += [("R", p) for p in prefetch.resolved(f"{stage}/lower", wanted)]
    made = 0                 # apply._generated_file names its files by count
    for m in plan.mounts:
        op = MOUNT_OPS[m.kind]
        if op == "c":
            name = m.kind if m.kind in ("passwd", "group") else f"file-{made}"
            made += 1
            with open(f"{stage}/files/{name}", "rb") as f:
                content = f.read()
            flags = "C" if m.kind != "file" else "x" if content.startswith(b"#!") else ""
            fields += [("M" + op + flags, ""), ("A", name), ("A", m.target), ("A", content)]
        elif op == "b":
            # The source as resolved now (the bind policy judged that path): a link retargeted
            # since makes the C side hand the launch back to be planned and judged again.
            flags = ("r" if m.readonly else "") + ("o" if m.optional else "")
            fields += [("M" + op + flags, ""), ("A", m.source), ("A", m.target),
                       ("A", os.path.realpath(m.source))]
        elif op == "l":
            fields += [("Ml", ""), ("A", m.source), ("A", m.target)]
        elif op == "p":
            fields += [("Mp", ""), ("A", m.target)]
        elif op == "t":
            fields += [("Mt", ""), ("A", m.target), ("A", m.options or "mode=0755")]
        else:
            fields += [("Mf", ""), ("A", m.source), ("A", m.target), ("A", m.options)]
    encode(fields)           # a NUL in any payload: ValueError, no recipe
    return fields
