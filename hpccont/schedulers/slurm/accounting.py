"""StepId accounting: one line per node and step naming the image and its digest, written as root.

``hpccont slurm account`` is the only program the plugin runs as root (docs/security.md): it gets
root's fixed environment, the job's identity from Slurm and the job's values as arguments, and it
opens the image as the user (privsep.py), hashing the descriptor it is handed.
"""
from __future__ import annotations

import os
TYPE_CHECKING = False   # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Dict, List, Mapping, Optional, Tuple

from ...errors import HpccontError, SchedulerError
from ...record import record
from ..common import OPTION_TABLE, env_name, is_registry_ref
from .plugin import JobIdentity, PluginArgs, StepId
from .task import CWD_VAR, find_image, image_kind, job_options, skip_reason

@record
class AccountingEntry:
    time: str
    job: str
    step: str
    node: str
    user: str
    uid: int
    image: str
    kind: str
    sha256: str
    size: int
    options: Dict[str, Optional[str]]
    error: str = ""
    reference: str = ""          # docker://... or oras://... as the job named it
    manifest_digest: str = ""    # the registry's digest of what was pulled for it


# The job variables ``account`` reads (it gets them as arguments; see spank_plugin/stepd_side.c).
ACCOUNTING_ENV = ("PWD", "SLURM_SUBMIT_DIR", "SLURM_JOB_USER", "SLURM_JOB_ID", CWD_VAR,
                  # for an image a registry serves: the user's cache, CA and credentials, used
                  # only by the child that has become the user (see locate_image_as_user)
                  "HPCCONT_CACHEDIR", "APPTAINER_CACHEDIR", "SSL_CERT_FILE", "SSL_CERT_DIR",
                  "DOCKER_CONFIG", "HPCCONT_DOCKER_USERNAME", "HPCCONT_DOCKER_PASSWORD",
                  "APPTAINER_DOCKER_USERNAME", "APPTAINER_DOCKER_PASSWORD", "HPCCONT_NOHTTPS")


def accounting_environ(jobenv: Mapping[str, str]) -> Dict[str, str]:
    """The part of the job's environment accounting uses; the rest never reaches root's code."""
    keep = set(ACCOUNTING_ENV) | {env_name(o) for o in OPTION_TABLE}
    return {k: v for k, v in jobenv.items() if k in keep}


def _digest_cache_path(log: str) -> str:
    return log + ".digests"


def _root_only_dir(path: str) -> None:
    """The accounting files go only where no user can write (or plant a symlink)."""
    import stat as stat_mod
    st = os.lstat(path)
    if not stat_mod.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise SchedulerError(f"{path} must be a directory owned by root and writable by root only")


def file_digest(fd: int, log: str) -> Tuple[str, int]:
    """sha256 of the regular file open on ``fd``, cached next to the log.

    The key is (dev, inode, size, mtime, ctime): rewriting a file in place and restoring its
    mtime still changes its ctime, which no user can set.  The cache is root's (0600).
    """
    import stat as stat_mod
    from ...cache import dumps, loads     # the json package alone costs ~10 ms (re, enum)
    st = os.fstat(fd)
    if not stat_mod.S_ISREG(st.st_mode):
        return "", 0
    key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    cache_file = _digest_cache_path(log)
    try:
        with open(cache_file) as f:
            cache = loads(f.read())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key], st.st_size
    import hashlib       # only to hash: OpenSSL's libcrypto costs ~5 ms to load
    h = hashlib.sha256()
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            break
        h.update(chunk)
        offset += len(chunk)
    cache[key] = h.hexdigest()
    tmp = f"{cache_file}.{os.getpid()}"
    try:
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600)
        with os.fdopen(out, "w") as f:
            f.write(dumps(dict(list(cache.items())[-1000:])))
        os.replace(tmp, cache_file)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return cache[key], st.st_size


def locate_image(image: str, environ: Mapping[str, str], cwd: str,
                 image_dirs: List[str]) -> Tuple[str, str, int, str]:
    """Find and open the image as the calling process: (path, kind, fd, manifest digest).
    A registry reference resolves to its SIF in the cache (the step's prepare pulls it at the
    same time; the cache makes it one pull), whose manifest digest is recorded too."""
    from ...privsep import open_checked
    path = find_image(image, environ, cwd, image_dirs)
    kind = image_kind(path)
    fd, real = open_checked(path, "dir" if kind == "sandbox" else "file")
    digest = ""
    if is_registry_ref(image):
        from ...image.registry.pull import describe
        digest = str(describe(path).get("digest", ""))
    return path, kind, fd, digest


def locate_image_as_user(ident: JobIdentity, image: str, environ: Mapping[str, str], cwd: str,
                         image_dirs: List[str], timeout: float = 30) -> Tuple[str, str, int, str]:
    """locate_image in a child that is the job's user: root gets the descriptor, never opens
    the user's path itself (a root-only file stays unread, a FIFO cannot hang the step)."""
    import pwd
    from ...privsep import run_as_user
    env = dict(environ)
    try:
        env.setdefault("HOME", pwd.getpwuid(ident.uid).pw_dir)
    except KeyError:
        pass

    def as_user():
        # This child is the user: the job's values may act here (a registry client reads its
        # CA bundle from the process environment).
        os.environ.update(env)
        path, kind, fd, digest = locate_image(image, env, cwd, image_dirs)
        return f"{kind}\0{path}\0{digest}", [fd]
    text, fds = run_as_user(as_user, ident.uid, ident.gid, ident.groups, timeout=timeout)
    kind, path, digest = text.split("\0", 2)
    return path, kind, fds[0], digest


def make_entry(step: StepId, args: PluginArgs, spank: Dict[str, Optional[str]],
                environ: Mapping[str, str], ident: Optional[JobIdentity] = None
                ) -> Optional[AccountingEntry]:
    """The accounting line for a step on this node, or None when the step has no container.
    ``ident``: the job's user, as whom the image is opened (None: the caller's own rights)."""
    made = _entry(step, args, spank, environ, ident)
    return made[0] if made else None


def _entry(step: StepId, args: PluginArgs, spank: Dict[str, Optional[str]],
           environ: Mapping[str, str], ident: Optional[JobIdentity]
           ) -> Optional[Tuple[AccountingEntry, Optional[os.stat_result]]]:
    """make_entry, and the fstat of the image file it hashed (None when none)."""
    import time
    try:
        opts = job_options(spank, environ)
    except HpccontError:
        return None    # the tasks fail with the message; nothing ran
    if skip_reason(opts, step, args, []):
        return None
    user = environ.get("SLURM_JOB_USER", "")
    if ident is not None:
        import pwd
        try:
            user = pwd.getpwuid(ident.uid).pw_name
        except KeyError:
            user = str(ident.uid)
    rec = AccountingEntry(time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), job=step.job, step=step.step,
                     node=os.uname().nodename.split(".")[0], user=user,
                     uid=ident.uid if ident is not None else -1,
                     image=opts.image or "", kind="", sha256="", size=0, options=dict(spank))
    cwd = environ.get("PWD") or environ.get("SLURM_SUBMIT_DIR") or "/"
    fd, image_st = -1, None
    try:
        if is_registry_ref(opts.image or ""):
            rec.reference = opts.image or ""
        if ident is None:
            rec.image, rec.kind, fd, rec.manifest_digest = locate_image(
                opts.image or "", environ, cwd, args.image_dirs)
        else:
            # A pull may take as long as prepare is allowed to.
            rec.image, rec.kind, fd, rec.manifest_digest = locate_image_as_user(
                ident, opts.image or "", environ, cwd, args.image_dirs,
                timeout=args.prepare_timeout if rec.reference else 30)
        if rec.kind != "sandbox":
            rec.sha256, rec.size = file_digest(fd, args.accounting)
            image_st = os.fstat(fd)
    except (HpccontError, OSError) as e:
        rec.error = e.one_line() if isinstance(e, HpccontError) else str(e)
    finally:
        if fd >= 0:
            os.close(fd)
    return rec, image_st


def append_entry(rec: AccountingEntry, log: str) -> None:
    from ...cache import dumps
    os.makedirs(os.path.dirname(log) or ".", mode=0o755, exist_ok=True)
    if os.geteuid() == 0:
        _root_only_dir(os.path.dirname(os.path.abspath(log)))
    line = dumps(rec.to_dict(), sort_keys=True) + "\n"
    # O_APPEND: several steps on a node write concurrently; one write() per line stays whole.
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def admin_comment(rec: AccountingEntry) -> str:
    """``hpccont:IMAGE@sha256:DIGEST`` (IMAGE: the registry reference when the job named one;
    DIGEST: of the file run, the SIF the reference was converted to)."""
    return f"hpccont:{rec.reference or rec.image}@sha256:{rec.sha256 or '-'}"


def set_admin_comment(rec: AccountingEntry, args: PluginArgs) -> None:
    """Best effort and not waited for: the step must not start later because of it.  Runs as
    root: scontrol from the system directories, with root's fixed environment."""
    from ...privsep import ROOT_ENV, system_program
    env = dict(ROOT_ENV)
    if args.slurm_conf:
        env["SLURM_CONF"] = args.slurm_conf
    # posix_spawn, not subprocess (~5-10 ms of imports): every descriptor this process holds
    # is close-on-exec, and the new session keeps scontrol out of the step's signals.
    devnull = [(os.POSIX_SPAWN_OPEN, fd, "/dev/null", os.O_RDWR, 0) for fd in (0, 1, 2)]
    try:
        os.posix_spawn(system_program("scontrol"),
                       ["scontrol", "update", f"JobId={rec.job}",
                        f"AdminComment={admin_comment(rec)}"],
                       env, file_actions=devnull, setsid=True)
    except (OSError, HpccontError):
        pass


def sets_admin_comment(step: StepId, node: Optional[int]) -> bool:
    """One node per step writes the AdminComment, the step's first (``node``: this node's
    index in the step, from Slurm; None when the plugin did not say): each write is an RPC
    that slurmctld handles, and every node would otherwise send the same one at the same
    instant (a 1000-node step, 1000 updates)."""
    return step.kind in ("batch", "step", "interactive") and node in (None, 0)


def run_account(step: StepId, args: PluginArgs, spank: Dict[str, Optional[str]],
               jobenv: Mapping[str, str], ident: Optional[JobIdentity],
               node: Optional[int] = None, argv: Optional[List[str]] = None) -> int:
    """``argv``: the command line as the plugin ran it, whose key a template is written under
    (None: no template)."""
    if os.geteuid() != 0:
        raise SchedulerError("'hpccont slurm account' is run by slurmstepd as root")
    if ident is None:
        raise SchedulerError("'hpccont slurm account' needs --user from the SPANK plugin")
    # Before anything is written there (the digest cache too): root's files, root's directory.
    log_dir = os.path.dirname(os.path.abspath(args.accounting))
    os.makedirs(log_dir, mode=0o755, exist_ok=True)
    _root_only_dir(log_dir)
    environ = accounting_environ(jobenv)
    made = _entry(step, args, spank, environ, ident)
    if made is None:
        return 0
    rec, image_st = made
    append_entry(rec, args.accounting)
    if args.admin_comment and not rec.error and sets_admin_comment(step, node):
        set_admin_comment(rec, args)
    # account.c looks beside the log the plugstack names (the default is Python's to know)
    if argv is not None and f"accounting={args.accounting}" in argv and \
            templatable(step, rec, image_st, spank, environ):
        write_template(argv, rec, image_st, args)
    return 0


# -- the same entry without an interpreter ------------------------------------------------------
# Every step on every node runs this program: an interpreter as root, ~20 ms of CPU beside the
# step's own start, for a line that differs from the last step's only in the step, the node
# and the time.  So after writing an entry it records an *accounting template* in a directory
# only root can write: the entry with those four values left open, the image file's stamp and
# the AdminComment command, under a key of everything the entry was made from.
# launcher/account.c (hpccont-account, which the plugin runs in this program's place when it
# is beside the launcher) computes the same key, opens the image as the user just as
# locate_image_as_user does, and writes the entry only when the file it was handed is the
# one hashed (same device, inode, size, mtime and ctime); anything else runs this program.
ACCOUNT_MAGIC = b"hpccont-account-1"
WRITER = "hpccont-account"
# The entry's open values, in the template's line: job, node, step, time.
OPEN_VALUES = {"job": "\x01", "node": "\x02", "step": "\x03", "time": "\x04"}


def template_dir(log: str) -> str:
    return log + ".templates"


def template_material(argv: List[str]) -> bytes:
    """The key, as account.c builds it (NUL-terminated strings): the words after ``slurm
    account`` up to ``--``, the step's name and the node's index as "-", the job variables of
    template.VARYING left out (with their ``--jobenv``); then what every C path's key holds,
    with "/" as the directory (account.c works from there) and argv[0] as the entry."""
    from ...runtime.share import common_material
    from .template import VARYING
    words = [os.fsencode(a) for a in argv[3:]]
    if b"--" in words:
        words = words[:words.index(b"--")]
    kept, i = [], 0
    while i < len(words):
        w = words[i]
        if w == b"--jobenv" and i + 1 < len(words) and \
                words[i + 1].split(b"=", 1)[0].decode("utf-8", "surrogateescape") in VARYING:
            i += 2
            continue
        kept.append(b"-" if i and words[i - 1] in (b"--step", b"--node") else w)
        i += 1
    parts = [ACCOUNT_MAGIC, b"n=%d" % len(kept), *kept,
             *common_material(b"/", os.fsencode(argv[0]))]
    return b"\0".join(parts) + b"\0"


def templatable(step: StepId, rec: AccountingEntry, image_st: Optional[os.stat_result],
                spank: Mapping[str, Optional[str]], environ: Mapping[str, str]) -> bool:
    """An ordinary step's entry for an image file that a new search would find again."""
    from .task import found_first
    if step.kind != "step" or rec.error or rec.reference or image_st is None:
        return False
    try:
        image = job_options(spank, environ).image or ""
    except HpccontError:
        return False
    cwd = environ.get("PWD") or environ.get("SLURM_SUBMIT_DIR") or "/"
    return found_first(image, rec.image, environ, cwd)


def template_fields(rec: AccountingEntry, image_st: os.stat_result, args: PluginArgs) -> list:
    """What account.c needs, as recipe fields: 'i' the image as found (opened again as the
    user), 'k' its stamp (share.stamp_of the fstat hashed), 'l' the entry with OPEN_VALUES' bytes in place of those values;
    where the step's first node sets the AdminComment, 'x' scontrol, 'a' its arguments after
    JobId=, 'E' its environment (ValueError: the entry cannot be a template)."""
    from ...cache import dumps
    from ...privsep import ROOT_ENV, system_program
    from ...runtime.share import stamp_of
    values = rec.to_dict()
    values.update(OPEN_VALUES)
    line = dumps(values, sort_keys=True)
    for byte in OPEN_VALUES.values():
        escaped = "\\u%04x" % ord(byte)
        if line.count(escaped) != 1:       # a value of the entry's own holds the byte
            raise ValueError("no template")
        line = line.replace(escaped, byte)
    fields = [("i", rec.image), ("k", stamp_of(image_st).decode()), ("l", line)]
    if args.admin_comment:
        env = dict(ROOT_ENV)
        if args.slurm_conf:
            env["SLURM_CONF"] = args.slurm_conf
        fields += [("x", system_program("scontrol")), ("a", f"AdminComment={admin_comment(rec)}")]
        fields += [("E", f"{k}={v}") for k, v in env.items()]
    return fields


def write_template(argv: List[str], rec: AccountingEntry, image_st: os.stat_result,
                   args: PluginArgs) -> None:
    """Best effort: without a template the next step runs this program again."""
    from ...runtime.share import write_recipe
    d = template_dir(args.accounting)
    try:
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        _root_only_dir(d)
        fields = template_fields(rec, image_st, args)
        dir_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            write_recipe(dir_fd, "account", template_material(argv), fields)
        finally:
            os.close(dir_fd)
    except (HpccontError, OSError, ValueError):
        pass


def read_entries(log: str) -> List[dict]:
    """Every entry in a node's accounting log (admins read it; lines that do not parse are skipped)."""
    import json
    try:
        with open(log) as f:
            lines = f.readlines()
    except FileNotFoundError:
        return []
    except PermissionError:
        raise SchedulerError(f"cannot read {log}: the step accounting log is for admins")
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
