"""Shared mounts within a scope: launches with the same mount plan use one mounted container.

Launches by the same user, on the same node, in the same scope (the Slurm or PBS job, the
caller's session and cgroup), whose plans agree on everything that is mounted (the image file
and every mount; not the command, the working directory or the environment) join one
container: the first one leaves a keeper (runtime/join.py, in the caller's cgroup), which stays
``runtime.share_idle_s`` seconds after its last guest, less once the caller's session leader is
gone, and never outlives its job (the batch system kills its cgroup).  Later launches enter it
with setns and exec: no mount, no FUSE server start, a warm page cache.

Only policy and keys live here; join.py enters containers and keeps them.  A launch that joins
also writes a *recipe* (runtime/recipe.py) for the exec fast path, launcher/fast.c: the same
launch again (same words up to the image, directory, ids, environment, image, config) then
joins without a Python interpreter.
"""
from __future__ import annotations

import os
import sys

from . import pending   # recipes are written inside the container, where the package may not be

# Plan fields that only the exec uses: launches differing in them still share a container.
EXEC_ONLY = ("env", "env_overrides", "env_dirs", "cwd", "argv", "join", "warnings", "action",
             "message_level", "umask")
FAST_MAGIC = b"hpccont-fast-1"
FAST_KINDS = ("hpccont", "run-singularity")
ACTIONS = ("exec", "run", "shell", "test")
MAX_RECIPES = 64


def decide(plan, cfg: dict, environ, choice: bool | None = None) -> tuple[str | None, str]:
    """(share key, why) when ``plan`` should use a shared container, else (None, why not).

    ``choice``: --share (True), --no-share (False), neither (None).  The site's
    ``runtime.share``: never | ask (only with --share or HPCCONT_SHARE=1) | always (unless
    --no-share or HPCCONT_SHARE=0)."""
    setting = cfg["runtime"].get("share", "ask")
    from ..config import yes_no
    env_choice = yes_no(environ.get("HPCCONT_SHARE") or "")
    if choice is False or (choice is None and env_choice is False):
        return None, "--no-share"
    if setting == "never":
        return None, "shared mounts are off at this site (runtime.share: never)"
    if not (choice or env_choice or setting == "always"):
        return None, "not asked for (runtime.share: ask; --share or HPCCONT_SHARE=1)"
    why = _unshareable(plan)
    if why:
        return None, why
    return share_key(plan, scope(environ)), "same user, scope and mount plan"


def _unshareable(plan) -> str | None:
    if plan.join:
        return "--join or an instance names its own container"
    if plan.mode != "rootless":
        return "root launches do not share (kernel mounts)"
    if plan.writable_tmpfs or getattr(plan, "writable", False) or getattr(plan, "overlays", None):
        return "a writable container is private to its launch"
    from .plan_types import PRIVATE_TO_LAUNCH
    for flag in PRIVATE_TO_LAUNCH:
        if getattr(plan, flag, None):
            return f"--{flag} namespaces or limits are private to their launch"
    return None


def scope(environ) -> str:
    """The Slurm or PBS job (when there is one), the caller's session and its cgroups."""
    job = environ.get("SLURM_JOB_ID")
    pbs = environ.get("PBS_JOBID")
    parts = [f"slurm:{job}" if job else f"pbs:{pbs}" if pbs else "nojob", f"sid:{os.getsid(0)}"]
    try:
        with open("/proc/self/cgroup") as f:
            parts.append(f.read())
    except OSError:
        parts.append("-")
    return "\0".join(parts)


def share_key(plan, scope_text: str) -> str:
    """Everything mounted: the plan without its exec-only fields, the image file's stamp."""
    data = plan.to_dict()
    for name in EXEC_ONLY:
        data.pop(name, None)
    image = stamp(plan.image.path).decode()
    text = repr((scope_text, image, sorted(data.items())))
    from ..digest import text_sha256
    return text_sha256(text)[:32]


def stamp(path) -> bytes:
    """A file's identity as launcher/fast.c writes it: device, inode, size, mtime, ctime."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return b"-"
    return stamp_of(st)


def stamp_of(st: os.stat_result) -> bytes:
    """stamp of a stat result (store.c's store_stamp_of)."""
    return b"%d:%d:%d:%d.%09d:%d.%09d" % (
        st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns // 10**9, st.st_mtime_ns % 10**9,
        st.st_ctime_ns // 10**9, st.st_ctime_ns % 10**9)


def describe(plan, cfg: dict, environ, choice: bool | None) -> dict | None:
    """For --dry-run: whether the launch would share, and join a live keeper."""
    key, why = decide(plan, cfg, environ, choice)
    if key is None:
        if choice is None and why.startswith("not asked"):
            return None               # nothing to say: the site has not turned sharing on
        return {"share": False, "why": why}
    from . import join
    plan.join, saved = "share:" + key, plan.join
    try:
        pid = join.keeper_pid(plan, cfg)
    finally:
        plan.join = saved
    return {"share": True, "key": key, "would_join": pid is not None, "keeper": pid,
            "idle_s": cfg["runtime"].get("share_idle_s", 60)}


def launch_shared(plan, cfg: dict, key: str, req, environ) -> None:
    """Join (or start) the shared container for ``key`` and exec; a recipe for the fast path is
    written on the way when this launch can be repeated without Python.  No return."""
    from .join import apply_joined, state_dir
    # Everything the joined side runs is imported here, before the container is entered: the
    # package itself (under /opt, say) is not visible inside it.
    from . import apply, recipe  # noqa: F401
    plan.join = "share:" + key
    fast = fast_inputs(req)
    then = None
    if fast is None:
        pending.release()       # no recipe to wait for (runtime/pending.py)
    else:
        material = fast_material(*fast)
        host_cwd, d = os.getcwd(), state_dir(cfg)
        then = lambda p, step, pid, dir_fd, name: _exec_and_record(  # noqa: E731
            p, step, pid, dir_fd, name, material, host_cwd, d, fast[3])
    apply_joined(plan, cfg, linger_s=float(cfg["runtime"].get("share_idle_s", 60)),
                 watch_pid=os.getsid(0), then=then)


def fast_inputs(req):
    """(kind, head words, cwd, command words) of this process's own command line, when it is
    ``hpccont ACTION [OPTIONS] IMAGE ARGS`` or ``run-singularity IMAGE ARGS`` (what fast.c
    sees), else None."""
    argv = [os.fsencode(a) for a in sys.argv]
    kind = os.path.basename(argv[0]).decode("utf-8", "surrogateescape") if argv else ""
    if kind not in FAST_KINDS or os.geteuid() == 0:
        return None
    words = argv[1:]
    cmd = [os.fsencode(a) for a in req.argv]
    if len(cmd) > len(words) or (cmd and words[len(words) - len(cmd):] != cmd):
        return None
    head = words[:len(words) - len(cmd)]
    if not head or head[-1] != os.fsencode(req.image):
        return None
    if kind == "hpccont" and (head[0].decode() not in ACTIONS or len(head) < 2):
        return None
    if kind == "run-singularity" and len(head) != 1:
        return None
    return kind.encode(), head, os.fsencode(os.getcwd()), cmd


def fast_material(kind: bytes, head: list, cwd: bytes, cmd=None) -> bytes:
    """The fast path's key, as launcher/fast.c builds it (NUL-terminated strings).  ``entry``
    is this entry point, the file fast.c falls back to: each install rewrites it, so recipes
    planned by another version of hpccont never match."""
    try:
        with open("/proc/self/environ", "rb") as f:      # as exec'd, before Python changed it
            block = f.read()
    except OSError:
        block = b""
    env = block.split(b"\0")[:-1] if block else []
    parts = [FAST_MAGIC, kind, b"n=%d" % len(head), *head,
             *common_material(cwd, os.fsencode(sys.argv[0])),
             b"image=" + stamp(head[-1]), b"env=%d" % len(env), *env]
    return b"\0".join(parts) + b"\0"


def common_material(cwd: bytes, entry: bytes) -> list:
    """What every C path's key holds, in launcher/store.c's order (store_add_common): the
    working directory, the ids, the stamps of the site config, /etc/passwd, /etc/group and
    the entry point the C side falls back to."""
    from ..config import config_path
    cfg_path = os.fsencode(config_path(os.environ))
    return [b"cwd=" + cwd,
            b"id=%d:%d:%d:%d" % (os.getuid(), os.geteuid(), os.getgid(), os.getegid()),
            b"config=" + cfg_path + b":" + stamp(cfg_path), b"passwd=" + stamp("/etc/passwd"),
            b"group=" + stamp("/etc/group"), b"entry=" + stamp(entry)]


def command_class(cmd: list) -> str:
    """What of the command's words an exec part depends on (recipe.c has the same): a shell
    gets a prompt (PS1) and a bare /bin/sh becomes bash (apply.exec_target); a recipe made for
    one class is applied only to commands of the same class."""
    if not cmd:
        return "none"
    if cmd[0] == b"/bin/sh" and len(cmd) == 1:
        return "sh1"
    return "sh" if cmd[0] in (b"/bin/sh", b"/bin/bash") else ""


def fnv1a(data: bytes) -> int:
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def recipe_name(material: bytes, kind: str = "fast") -> str:
    """fast-KEY joins a shared container, cold-KEY builds one (runtime/cold.py)."""
    return "%s-%016x" % (kind, fnv1a(material))


def _exec_and_record(plan, step, keeper: int, dir_fd: int, name: str, material: bytes,
                     host_cwd: str, d: str, cmd: list) -> None:
    """Inside the joined container: decide the exec as ``execute`` does, record it, exec it."""
    from .apply import exec_command, exec_target
    path, argv, env = exec_target(plan, step)
    try:
        _record(plan, keeper, dir_fd, os.path.join(d, name), material, host_cwd, argv, env,
                cmd)
    except (OSError, ValueError):
        pass            # no recipe: the next launch takes this path again
    finally:
        os.close(dir_fd)
    exec_command(plan, step, path, argv, env)


def _record(plan, keeper, dir_fd, state, material, host_cwd, argv, env, cmd) -> None:
    from .join import start_time
    fields = exec_fields(plan, host_cwd, argv, env, cmd)
    if fields is None:
        return
    fields = [("m", plan.mode), ("p", str(keeper)), ("t", start_time(keeper))] + fields
    fields += [("L", state + ".lock"), ("G", state + ".guests")]
    write_recipe(dir_fd, "fast", material, fields)


def exec_fields(plan, host_cwd: str, argv: list, env: dict, cmd: list) -> list | None:
    """A recipe's exec part (shared and cold recipes alike): the program words before the
    command's and the final environment, exactly as apply.exec_target decided them; None when
    the exec is not "prefix + the command's words" or says something at every launch (then
    the Python path stays the only one)."""
    words = [os.fsencode(a) for a in argv]
    if plan.umask is not None or len(words) < len(cmd) or (
            cmd and words[len(words) - len(cmd):] != cmd):
        return None
    if plan.action == "run" and plan.argv and plan.argv[0] not in argv:
        return None          # no runscript: the Python path says so at every launch
    prefix = words[:len(words) - len(cmd)]
    if not cmd and not prefix:
        return None
    fields = [("h", host_cwd), ("w", plan.cwd), ("x", ""), ("W", command_class(cmd))]
    fields += [("a", w) for w in prefix]
    return fields + [("K", "")] + [("s", f"{k}={v}") for k, v in env.items()]


def write_recipe(dir_fd: int, kind: str, material: bytes, fields) -> None:
    """The recipe file launcher/fast.c reads: "MAGIC <material length>\\n", the key material,
    the fields; written whole under a temporary name, then renamed (readers never see half)."""
    from .recipe import encode
    data = b"%s %d\n" % (FAST_MAGIC, len(material)) + material + encode(fields)
    final = recipe_name(material, kind)
    tmp = f"{final}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    pending.release()           # launches waiting in fast.c for this recipe may go on
    _prune(dir_fd, kind)


def _prune(dir_fd: int, kind: str = "fast", keep: int = MAX_RECIPES) -> None:
    """At most ``keep`` recipes of a kind, the newest (a launcher whose environment changes at
    every start, as hyperfine's does, would otherwise leave one per start)."""
    names = [n for n in os.listdir(dir_fd) if n.startswith(kind + "-") and "." not in n]
    if len(names) <= keep:
        return
    aged = []
    for n in names:
        try:
            aged.append((os.stat(n, dir_fd=dir_fd, follow_symlinks=False).st_mtime_ns, n))
        except OSError:
            continue
    for _, n in sorted(aged)[:len(aged) - keep]:
        try:
            os.unlink(n, dir_fd=dir_fd)
        except OSError:
            pass

