"""Site configuration: one YAML file an admin edits (site-config/hpccont.yaml documents every key).

Read from ``/etc/hpccont/hpccont.yaml`` (or ``$HPCCONT_CONFIG``, honoured for root and on
machines without a site config); a missing file means defaults.
Unknown keys and values of the wrong type are ConfigError (one line, naming the key).

``hpccont exec`` runs once per task of every job, and a YAML parser costs more to import than
the whole launch.  So the validated config is kept in the per-user cache (cache.py), stamped
with the file's size, mtime, ctime, device and inode; the YAML parser is imported only when that
is stale.  The user can write that cache, as they can run any runtime of their own: in rootless
mode the config is not a boundary against its user (docs/security.md says where sites enforce).
"""
from __future__ import annotations

import os

from . import cache
from .errors import ConfigError

DEFAULT_PATH = "/etc/hpccont/hpccont.yaml"

# The one spelling of yes and no in variables and arguments (HPCCONT_SHARE, plugstack and hook
# arguments, job option variables); YAML values are booleans already.
YES = ("1", "yes", "true", "on")
NO = ("0", "no", "false", "off")


def yes_no(value: str) -> "bool | None":
    """True, False, or None when ``value`` is neither (the caller says which setting it was)."""
    v = value.strip().lower()
    return True if v in YES else False if v in NO else None

# mounts.dev as Apptainer's ``mount dev = yes|no|minimal``: a boolean, or the word minimal.
DEV = "bool or minimal"

# section -> key -> (type, default).  ``list`` means a list of strings; ``dict`` an open mapping.
SCHEMA: dict[str, dict[str, tuple]] = {
    "mounts": {
        "binds": (list, []),              # extra "src[:dst[:ro]]" binds for every container
        "home": (bool, True),             # mount the user's home directory
        "tmp": (bool, True),              # bind host /tmp and /var/tmp
        "cwd": (bool, True),              # bind the working directory when it is outside $HOME
        "proc": (bool, True),
        "sys": (bool, True),
        "dev": (DEV, True),               # true: host /dev; "minimal": Apptainer's minimal /dev
        "hostfiles": (list, ["/etc/hosts", "/etc/localtime", "/etc/resolv.conf"]),
        "user_binds": (bool, True),       # may users add their own -B binds?
        "user_bind_denylist": (list, ["/etc/shadow", "/etc/gshadow", "/root"]),
    },
    "images": {
        "allowed_dirs": (list, []),       # empty: images anywhere; else only under these dirs
        "image_dirs": (list, []),         # where bare names (--container=pytorch) are looked up
        "allow_sandbox": (bool, True),
        "allow_squashfs": (bool, True),
    },
    "runtime": {
        "rootless": (str, "auto"),        # auto | always | never (never: non-root users refused)
        "squashfuse": (str, "squashfuse_ll"),   # FUSE server for rootless mounts
        "fuse_cache": (bool, True),       # kernel caching of its opens, listings, links (fusecache.so)
        "overlay": (str, "kernel"),       # kernel | fuse-overlayfs
        "root_mount": (str, "loop"),      # loop (kernel squashfs) | fuse
        "prefetch": (bool, True),         # read the command into the page cache while mounting
        "share": (str, "ask"),            # never | ask (--share) | always (unless --no-share)
        "share_idle_s": (int, 60),        # a shared container's keeper leaves after this idle
        "tmp_size": (str, "64m"),         # size of --writable-tmpfs and of the scratch tmpfs
        "state_dir": (str, "/run/hpccont"),     # joined containers (shared namespaces) when root
        "session_dir": (str, ""),         # staging mount point; "" = the one shipped in the package
    },
    "build": {
        "compression": (str, "zstd"),     # squashfs compressor of built images
        "compression_level": (int, 9),    # 0: the compressor's own default
    },
    "registry": {
        "allowed": (list, []),            # registries (host[:port] or HOST/REPO globs); empty: any
        "compute_node_pulls": (bool, True),   # in a Slurm/PBS job: false = cached images only
        "site_cache": (str, ""),          # read-only cache an admin fills (HPCCONT_CACHEDIR layout)
    },
    "signatures": {
        "require": (bool, False),         # refuse unsigned or unverifiable SIF images
        "keyring": (list, []),            # trusted public keys (PEM or armored PGP files)
    },
    "nvidia": {
        "always": (bool, False),          # behave as if --nv were always given
        "liblist": (str, ""),             # nvliblist.conf; "" = the one shipped in site-config/
        "ldconfig": (str, "/sbin/ldconfig"),
    },
    "rocm": {
        "liblist": (str, ""),             # rocmliblist.conf; "" = the one shipped in site-config/
        "ldconfig": (str, ""),            # "" = nvidia.ldconfig (the host's one cache)
    },
    "mpi": {
        "installations": (list, []),      # host MPI prefixes (e.g. /usr/lib/x86_64-linux-gnu/openmpi)
        "extra_libs": (list, []),         # more libraries to bind in bind mode (globs)
        "devices": (list, ["/dev/infiniband"]),
        "default_mode": (str, "hybrid"),
    },
    "modules": {
        "tree": (list, []),               # module trees bound into containers (module load inside)
        "lmod_init": (str, "/usr/share/lmod/lmod/init"),
        "central_image_dir": (str, ""),   # source of image-update
    },
}

CHOICES = {
    ("runtime", "rootless"): ("auto", "always", "never"),
    ("runtime", "squashfuse"): ("squashfuse", "squashfuse_ll"),
    ("runtime", "overlay"): ("kernel", "fuse-overlayfs"),
    ("runtime", "root_mount"): ("loop", "fuse"),
    ("runtime", "share"): ("never", "ask", "always"),
    ("mpi", "default_mode"): ("hybrid", "bind"),
    ("build", "compression"): ("gzip", "xz", "lz4", "lzo", "zstd", "lzma"),
}


def defaults() -> dict[str, dict[str, object]]:
    return {sec: {k: (list(v[1]) if isinstance(v[1], list) else v[1]) for k, v in keys.items()}
            for sec, keys in SCHEMA.items()}


def validate(raw: object, source: str = "config") -> dict[str, dict[str, object]]:
    """Merge ``raw`` (parsed YAML) over the defaults, refusing unknown keys and wrong types."""
    cfg = defaults()
    if raw is None:
        return cfg
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections")
    for sec, body in raw.items():
        if sec not in SCHEMA:
            raise ConfigError(f"{source}: unknown section {sec!r} (known: {', '.join(SCHEMA)})")
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: section {sec!r} must be a mapping")
        for key, value in body.items():
            if key not in SCHEMA[sec]:
                raise ConfigError(f"{source}: unknown key {sec}.{key} "
                                  f"(known: {', '.join(SCHEMA[sec])})")
            typ = SCHEMA[sec][key][0]
            cfg[sec][key] = _check(value, typ, f"{source}: {sec}.{key}")
            choices = CHOICES.get((sec, key))
            if choices and cfg[sec][key] not in choices:
                raise ConfigError(f"{source}: {sec}.{key} must be one of {', '.join(choices)}, "
                                  f"not {value!r}")
    return cfg


def _check(value: object, typ: type, where: str) -> object:
    if typ is list:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, (str, dict)) for v in value):
            raise ConfigError(f"{where} must be a list")
        return value
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, not {value!r}")
        return value
    if typ == DEV:
        if not isinstance(value, bool) and value != "minimal":
            raise ConfigError(f"{where} must be true, false or minimal, not {value!r}")
        return value
    if typ is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where} must be a string, not {value!r}")
        return str(value)
    if typ is int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{where} must be a whole number >= 0, not {value!r}")
        return value
    return value


def config_path(environ=os.environ) -> str:
    """``$HPCCONT_CONFIG`` for root, or where no site config is installed; else the site's.

    The site config is policy (allowed images, user binds, required signatures): a user must
    not be able to swap it for a file of their own with an environment variable.
    """
    override = environ.get("HPCCONT_CONFIG")
    if override and (os.geteuid() == 0 or not os.path.exists(DEFAULT_PATH)):
        return override
    return DEFAULT_PATH


def parse_file(path: str) -> dict[str, dict[str, object]]:
    """Read and validate a YAML config file (no cache)."""
    try:
        import yaml
    except ImportError:
        raise ConfigError("reading the site config needs PyYAML (pip install pyyaml)")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"cannot read site config {path}: {e.strerror}")
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"site config {path}{where}: not valid YAML")
    except UnicodeDecodeError as e:
        raise ConfigError(f"site config {path}: not UTF-8 text (byte {e.start})") from None
    except ValueError as e:        # a scalar the YAML resolver takes for a date that is none
        raise ConfigError(f"site config {path}: not valid YAML ({e})") from None
    except (LookupError, TypeError, ArithmeticError):
        # PyYAML's constructors index and convert scalars without checking them: an explicit
        # tag on an empty value (`!!int ''`) raises IndexError
        raise ConfigError(f"site config {path}: not valid YAML (a tagged value it cannot "
                          f"read)") from None
    except RecursionError:
        raise ConfigError(f"site config {path}: not valid YAML (nested too deep)") from None
    return validate(raw, path)


def _cached(path: str, stamp: list):
    """The cached copy, if it is exactly what validating it gives: a damaged or hand-edited
    entry (the user can write it) is recomputed from the file, never half used."""
    cfg = cache.read("config", path, stamp)
    try:
        return cfg if isinstance(cfg, dict) and validate(cfg, path) == cfg else None
    except ConfigError:
        return None


def load(environ=os.environ, use_cache: bool = True) -> dict[str, dict[str, object]]:
    """The effective site config."""
    path = config_path(environ)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if path != DEFAULT_PATH:
            raise ConfigError(f"site config {path} (from HPCCONT_CONFIG) does not exist")
        return defaults()
    except OSError as e:
        raise ConfigError(f"cannot read site config {path}: {e.strerror}")
    stamp = cache.stat_stamp(st)
    if use_cache:
        cfg = _cached(path, stamp)
        if cfg is not None:
            return cfg
    cfg = parse_file(path)
    if use_cache:
        cache.write("config", path, stamp, cfg)
    return cfg
