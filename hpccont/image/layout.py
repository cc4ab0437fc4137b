"""The ``/.singularity.d`` metadata layout inside a container, as Apptainer lays it out.

What lives there, and who reads it::

    /.singularity.d/
        runscript          `run` / `./img.sif`        (executable script)
        startscript        instance start
        test               `test`
        runscript.help     `inspect --helpfile` / `run-help`
        labels.json        `inspect --labels`        (flat JSON object of strings)
        env/NN-*.sh        sourced in name order by every action (90-environment.sh: %environment)
        actions/{exec,run,shell,start,test}   the scripts the runtime starts
        libs/              host libraries bound in (--nv), on LD_LIBRARY_PATH through 99-base.sh
    /singularity, /apptainer    -> .singularity.d/runscript  (older images and tools look here)
    /.run /.exec /.shell /.test -> .singularity.d/actions/*
    /environment                -> .singularity.d/env/90-environment.sh

Writing fills in only what is missing, so the files of an image built by Apptainer (or by the
user) are kept as they are: images move both ways.  Reading works on a sandbox directory or on
any ``read(path) -> bytes | None`` function (image/inspect uses unsquashfs for SIF and squashfs).
"""
import json
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

META_DIR = ".singularity.d"

_SOURCE_ENV = """for script in /.singularity.d/env/*.sh; do
    if [ -f "$script" ]; then
        . "$script"
    fi
done
"""

# The action scripts: each sources the environment scripts, then starts its target.  Written
# in Apptainer's structure (and honouring APPTAINER_APPNAME / SCIF apps the same way) so that a
# runtime that starts /.singularity.d/actions/run finds the behaviour it expects.
ACTIONS: Dict[str, str] = {
    "exec": "#!/bin/sh\n\n" + _SOURCE_ENV + '\nexec "$@"\n',
    "run": "#!/bin/sh\n\n" + _SOURCE_ENV + """
if test -n "${APPTAINER_APPNAME:-}"; then
    app="/scif/apps/${APPTAINER_APPNAME}/scif/runscript"
    if test -x "$app"; then
        exec "$app" "$@"
    fi
    echo "No runscript for contained app: ${APPTAINER_APPNAME}"
    exit 1
elif test -x /.singularity.d/runscript; then
    exec /.singularity.d/runscript "$@"
fi
echo "No runscript found in the container, executing /bin/sh"
exec /bin/sh "$@"
""",
    "shell": "#!/bin/sh\n\n" + _SOURCE_ENV + """
if test -n "${APPTAINER_SHELL:-}" && test -x "$APPTAINER_SHELL"; then
    exec $APPTAINER_SHELL "$@"
elif test -x /bin/bash; then
    SHELL=/bin/bash
    PS1="Apptainer> "
    export SHELL PS1
    exec /bin/bash --norc "$@"
elif test -x /bin/sh; then
    SHELL=/bin/sh
    export SHELL
    exec /bin/sh "$@"
fi
echo "ERROR: /bin/sh does not exist in the container" 1>&2
exit 1
""",
    "start": "#!/bin/sh\n\n" + _SOURCE_ENV + """
if test -x /.singularity.d/startscript; then
    exec /.singularity.d/startscript
fi
""",
    "test": "#!/bin/sh\n\n" + _SOURCE_ENV + """
if test -n "${APPTAINER_APPNAME:-}"; then
    app="/scif/apps/${APPTAINER_APPNAME}/scif/test"
    if test -x "$app"; then
        exec "$app" "$@"
    fi
    echo "No tests for contained app: ${APPTAINER_APPNAME}"
    exit 1
elif test -x /.singularity.d/test; then
    exec /.singularity.d/test "$@"
fi
echo "No test found in the container, executing /bin/sh -c true"
exec /bin/sh -c true
""",
}

ENV_SCRIPTS: Dict[str, str] = {
    "01-base.sh": "#!/bin/sh\n# Base environment of the container (sourced first).\n",
    "90-environment.sh": "#!/bin/sh\n# Custom environment shell code should follow\n\n",
    "99-base.sh": """#!/bin/sh
# Host libraries bound into /.singularity.d/libs (e.g. with --nv) come last on the path.
if [ -z "${LD_LIBRARY_PATH:-}" ]; then
    LD_LIBRARY_PATH=/.singularity.d/libs
else
    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs"
fi
PS1="Apptainer> "
export LD_LIBRARY_PATH PS1
""",
    "99-runtimevars.sh": """#!/bin/sh
# PATH changes requested on the command line, applied after the image's own environment.
if [ -n "${SING_USER_DEFINED_PREPEND_PATH:-}" ]; then
    PATH="${SING_USER_DEFINED_PREPEND_PATH}:${PATH}"
fi
if [ -n "${SING_USER_DEFINED_APPEND_PATH:-}" ]; then
    PATH="${PATH}:${SING_USER_DEFINED_APPEND_PATH}"
fi
if [ -n "${SING_USER_DEFINED_PATH:-}" ]; then
    PATH="${SING_USER_DEFINED_PATH}"
fi
unset SING_USER_DEFINED_PREPEND_PATH SING_USER_DEFINED_APPEND_PATH SING_USER_DEFINED_PATH
export PATH
""",
}

DEFAULT_RUNSCRIPT = '#!/bin/sh\n\necho "There is no runscript defined for this container"\n'
DEFAULT_STARTSCRIPT = "#!/bin/sh\n"

# Mount points for the default binds and the metadata directories, created as Apptainer's
# build does, so that a read-only image has a place for /proc, $HOME, /tmp...
SKELETON_DIRS = ((META_DIR, 0o755), (f"{META_DIR}/actions", 0o755), (f"{META_DIR}/env", 0o755),
                 (f"{META_DIR}/libs", 0o755), ("dev", 0o755), ("proc", 0o755), ("sys", 0o755),
                 ("root", 0o700), ("home", 0o755), ("etc", 0o755), ("tmp", 0o1777),
                 ("var", 0o755), ("var/tmp", 0o1777))

# link in the root -> target (relative, so it resolves inside the container)
SYMLINKS: Dict[str, str] = {
    "singularity": ".singularity.d/runscript",
    "apptainer": ".singularity.d/runscript",
    ".run": ".singularity.d/actions/run",
    ".exec": ".singularity.d/actions/exec",
    ".shell": ".singularity.d/actions/shell",
    ".test": ".singularity.d/actions/test",
    "environment": ".singularity.d/env/90-environment.sh",
}

# inspect option -> file inside the image
INSPECT_FILES: Dict[str, str] = {
    "runscript": ".singularity.d/runscript",
    "startscript": ".singularity.d/startscript",
    "test": ".singularity.d/test",
    "helpfile": ".singularity.d/runscript.help",
    "labels": ".singularity.d/labels.json",
    "deffile": ".singularity.d/Singularity",    # the definition a build used, inside the image
}


# The attribute order of Apptainer's pkg/inspect Attributes struct, as encoding/json writes it.
ATTRIBUTE_ORDER = ("apps", "environment", "labels", "runscript", "test", "helpfile", "deffile",
                   "startscript")
APP_ATTRIBUTE_ORDER = ("environment", "labels", "runscript", "startscript", "test", "helpfile")
CONTAINER_TYPE = "container"


def go_json(value, indent: Optional[str] = None) -> str:
    """JSON as Go's encoding/json writes it (``json.Marshal``, or ``MarshalIndent(v, "", indent)``):
    map keys sorted, no spaces when compact, UTF-8 kept, and ``<``, ``>``, ``&``, U+2028 and
    U+2029 escaped as ``\\u003c``... (Go's HTML-safe default)."""
    if indent is None:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    else:
        text = json.dumps(value, ensure_ascii=False, indent=indent, separators=(",", ": "))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _trimmed(value: Optional[str]) -> Optional[str]:
    """Apptainer keeps each file's text without its trailing newlines (inspect's setAttribute)."""
    return None if value is None else value.rstrip("\n")


@dataclass
class Metadata:
    """What ``inspect`` reports about an image: the fields of Apptainer's inspect metadata
    (pkg/inspect), each text without its trailing newlines, as Apptainer stores them."""
    labels: Dict[str, str]
    deffile: Optional[str] = None
    runscript: Optional[str] = None
    startscript: Optional[str] = None
    test: Optional[str] = None
    helpfile: Optional[str] = None
    environment: Optional[Dict[str, str]] = None   # env script path -> content
    apps: Optional[Dict[str, Dict[str, object]]] = None   # SCIF app -> its attributes

    def attributes(self) -> dict:
        """The non-empty attributes in Apptainer's order (``omitempty``: "" and {} are left out)."""
        values = {"apps": self.apps, "environment": self.environment, "labels": self.labels,
                  "runscript": self.runscript, "test": self.test, "helpfile": self.helpfile,
                  "deffile": self.deffile, "startscript": self.startscript}
        out: dict = {}
        for key in ATTRIBUTE_ORDER:
            value = values[key]
            if key == "apps" and value:
                value = {name: _app_attributes(attrs) for name, attrs in sorted(value.items())}
            if value:
                out[key] = dict(sorted(value.items())) if isinstance(value, dict) else value
        return out

    def document(self, attributes: Optional[dict] = None) -> dict:
        """Apptainer's inspect.Metadata: ``{"data": {"attributes": {...}}, "type": "container"}``."""
        return {"data": {"attributes": self.attributes() if attributes is None else attributes},
                "type": CONTAINER_TYPE}

    def sif_document(self) -> bytes:
        """The JSON.Generic object "inspect-metadata.json" of a SIF, byte for byte as Apptainer's
        build writes it (``json.Marshal`` of the metadata ``inspect --all`` gives)."""
        return go_json(self.document()).encode()

    def to_json(self) -> str:
        """The document ``apptainer inspect --json`` prints (``MarshalIndent`` with a tab)."""
        return go_json(self.document(), indent="\t") + "\n"


def _app_attributes(attrs: Dict[str, object]) -> dict:
    out = {}
    for key in APP_ATTRIBUTE_ORDER:
        value = attrs.get(key)
        if value:
            out[key] = dict(sorted(value.items())) if isinstance(value, dict) else value
    return out


def metadata_from_document(doc) -> Optional[Metadata]:
    """Metadata from a stored JSON document: Apptainer's ``{"data": {"attributes": ...},
    "type": "container"}``, or the bare ``{"attributes": ...}`` older hpccont releases wrote.
    None when the document is neither."""
    if not isinstance(doc, dict):
        return None
    data = doc.get("data")
    if isinstance(data, dict) and isinstance(data.get("attributes"), dict):
        attrs = data["attributes"]
    elif isinstance(doc.get("attributes"), dict):
        attrs = doc["attributes"]
    else:
        return None

    def text(d: dict, key: str) -> Optional[str]:
        value = d.get(key)
        return _trimmed(value) if isinstance(value, str) and value else None

    def strings(d: dict, key: str) -> Optional[Dict[str, str]]:
        value = d.get(key)
        if not isinstance(value, dict) or not value:
            return None
        return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}
    apps = {}
    for name, a in (attrs.get("apps") or {}).items() if isinstance(attrs.get("apps"), dict) else ():
        if isinstance(a, dict):
            apps[str(name)] = {k: v for k, v in (
                ("environment", strings(a, "environment")), ("labels", strings(a, "labels")),
                ("runscript", text(a, "runscript")), ("startscript", text(a, "startscript")),
                ("test", text(a, "test")), ("helpfile", text(a, "helpfile"))) if v}
    return Metadata(labels=strings(attrs, "labels") or {}, deffile=text(attrs, "deffile"),
                    runscript=text(attrs, "runscript"), startscript=text(attrs, "startscript"),
                    test=text(attrs, "test"), helpfile=text(attrs, "helpfile"),
                    environment=strings(attrs, "environment"), apps=apps or None)


# ---------------------------------------------------------------- writing
@dataclass
class Entry:
    """One thing the layout adds to an image: planned first, then applied to a directory or
    handed to mksquashfs as a pseudo file (so a source sandbox is never modified)."""
    path: str                 # relative to the container root
    kind: str                 # "dir" | "file" | "symlink"
    mode: int
    content: str = ""         # file content, or symlink target
    replace: bool = False     # the image already has this path: it is replaced


def plan_layout(exists: Callable[[str], bool], read: "Reader", *, runscript: Optional[str] = None,
                startscript: Optional[str] = None, test: Optional[str] = None,
                helpfile: Optional[str] = None, environment: Optional[str] = None,
                deffile: Optional[str] = None,
                labels: Optional[Dict[str, str]] = None) -> List[Entry]:
    """What completes the ``/.singularity.d`` layout of an image.

    Missing pieces get Apptainer's defaults; existing files are kept, except those given
    explicitly (a build's %runscript, %startscript, %test, %help, %environment).  ``labels``
    are merged into labels.json, which is rewritten when they change it.
    """
    entries: List[Entry] = []

    def add(path: str, kind: str, mode: int, content: str = "", force: bool = False) -> None:
        there = exists(path)
        if there and not force:
            return
        entries.append(Entry(path, kind, mode, content, replace=there))

    for d, mode in SKELETON_DIRS:
        add(d, "dir", mode)
    for name, body in ACTIONS.items():
        add(f"{META_DIR}/actions/{name}", "file", 0o755, body)
    for name, body in ENV_SCRIPTS.items():
        add(f"{META_DIR}/env/{name}", "file", 0o755, body)
    explicit = {"runscript": (runscript, 0o755), "startscript": (startscript, 0o755),
                "test": (test, 0o755), "runscript.help": (helpfile, 0o644),
                "env/90-environment.sh": (environment, 0o755), "Singularity": (deffile, 0o644)}
    for name, (body, mode) in explicit.items():
        if body is not None:
            add(f"{META_DIR}/{name}", "file", mode, body, force=True)
    add(f"{META_DIR}/runscript", "file", 0o755, DEFAULT_RUNSCRIPT)
    add(f"{META_DIR}/startscript", "file", 0o755, DEFAULT_STARTSCRIPT)
    current = parse_labels(read(INSPECT_FILES["labels"]))
    merged = dict(current)
    merged.update(labels or {})
    if merged != current or not exists(INSPECT_FILES["labels"]):
        add(INSPECT_FILES["labels"], "file", 0o644, labels_json(merged), force=True)
    for link, target in SYMLINKS.items():
        add(link, "symlink", 0o777, target)
    return entries


def apply_layout(root: str, entries: List[Entry]) -> None:
    for e in entries:
        path = os.path.join(root, e.path)
        if e.kind == "dir":
            os.makedirs(path, exist_ok=True)
            os.chmod(path, e.mode)
            continue
        if os.path.lexists(path) and (e.kind == "symlink" or not os.path.isfile(path)
                                      or os.path.islink(path)):
            os.unlink(path)
        if e.kind == "symlink":
            os.symlink(e.content, path)
        else:
            with open(path, "w") as f:
                f.write(e.content)
            os.chmod(path, e.mode)


def pseudo_definitions(entries: List[Entry], stage: str, mtime: Optional[int] = None
                       ) -> Tuple[List[str], List[str]]:
    """(mksquashfs -p definitions, paths to exclude) adding ``entries`` while packing a tree.

    File contents are staged under ``stage`` and read back with ``cat``; replaced paths are
    excluded from the source tree so the pseudo file takes their place.  With ``mtime`` the
    entries get that time (the timed D/F/S forms); without it, mksquashfs's own (the time of
    packing, or SOURCE_DATE_EPOCH).
    """
    pseudo, excludes = [], []

    def kind(letter: str) -> str:
        return letter if mtime is None else f"{letter.upper()} {mtime}"
    for i, e in enumerate(entries):
        if e.replace:
            excludes.append(e.path)
        if e.kind == "dir":
            pseudo.append(f"{e.path} {kind('d')} {e.mode:o} 0 0")
        elif e.kind == "symlink":
            pseudo.append(f"{e.path} {kind('s')} {e.mode:o} 0 0 {e.content}")
        else:
            staged = os.path.join(stage, f"{i:03d}")
            with open(staged, "w") as f:
                f.write(e.content)
            pseudo.append(f"{e.path} {kind('f')} {e.mode:o} 0 0 cat {staged}")
    return pseudo, excludes


def write_layout(root: str, **kw) -> None:
    """Complete the layout of the sandbox directory ``root`` in place (see plan_layout)."""
    entries = plan_layout(lambda rel: os.path.lexists(os.path.join(root, rel)), dir_reader(root), **kw)
    apply_layout(root, entries)


def labels_json(labels: Dict[str, str]) -> str:
    """labels.json as Apptainer's build writes it: ``json.MarshalIndent(labels, "", "\\t")``."""
    return go_json(dict(sorted(labels.items())), indent="\t")


def parse_labels(raw: Optional[bytes]) -> Dict[str, str]:
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):   # RecursionError: nested too deep
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()} \
        if isinstance(data, dict) else {}


# ---------------------------------------------------------------- reading
Reader = Callable[[str], Optional[bytes]]


def _read_dir_file(root: str, rel: str) -> Optional[bytes]:
    """A file of a sandbox, resolving symlinks inside the root only (never the host's files)."""
    path = _resolve_inside(root, rel)
    if path is None or not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _resolve_inside(root: str, rel: str, depth: int = 0) -> Optional[str]:
    if depth > 16:
        return None
    current = root
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    for i, part in enumerate(parts):
        if part == "..":
            current = os.path.dirname(current) if current != root else root
            continue
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            target = os.readlink(candidate)
            base = "" if target.startswith("/") else os.path.relpath(current, root)
            rest = "/".join(parts[i + 1:])
            joined = "/".join(p for p in (base if base != "." else "", target.lstrip("/"), rest) if p)
            return _resolve_inside(root, joined, depth + 1)
        current = candidate
    return current


def dir_reader(root: str) -> Reader:
    return lambda rel: _read_dir_file(root, rel)


def env_script_names(listing: List[str], prefix: str = META_DIR) -> List[str]:
    """The env scripts ``inspect`` shows among paths of an image listing, as Apptainer picks
    them: ``10-docker*.sh`` (the image's own directory only) and ``9*-environment.sh``."""
    env = prefix + "/env/"
    out = []
    for p in listing:
        if not p.startswith(env) or "/" in p[len(env):]:
            continue
        name = p[len(env):]
        if (name.startswith("9") and name.endswith("-environment.sh")) or (
                prefix == META_DIR and name.startswith("10-docker") and name.endswith(".sh")):
            out.append(p)
    return sorted(out)


def list_env_dir(root: str, prefix: str = META_DIR) -> List[str]:
    env = _resolve_inside(root, f"{prefix}/env")
    try:
        return [f"{prefix}/env/{n}" for n in os.listdir(env)] if env else []
    except OSError:
        return []


SCIF_APPS = "scif/apps"


def list_apps(root: str) -> Dict[str, List[str]]:
    """SCIF apps of a tree (``/scif/apps/NAME/scif``) -> their env script listing."""
    apps = _resolve_inside(root, SCIF_APPS)
    try:
        names = sorted(os.listdir(apps)) if apps else []
    except OSError:
        return {}
    out = {}
    for name in names:
        scif = _resolve_inside(root, f"{SCIF_APPS}/{name}/scif")
        if scif and os.path.isdir(scif):
            out[name] = list_env_dir(root, f"{SCIF_APPS}/{name}/scif")
    return out


# Singularity 2 images put the runscript at /singularity and the environment at /environment
# (before /.singularity.d existed, or as links into it).
LEGACY_FILES = {"runscript": "singularity", "environment": "environment"}


def read_metadata(read: Reader, env_scripts: List[str], deffile: Optional[str] = None,
                  apps: Optional[Dict[str, List[str]]] = None) -> Metadata:
    """The metadata ``apptainer inspect --all`` reads from a tree: each file's text without its
    trailing newlines, the env scripts inspect shows, and each SCIF app's files."""
    def text(rel: str) -> Optional[str]:
        raw = read(rel)
        return None if raw is None else _trimmed(raw.decode("utf-8", "replace"))

    def environment_of(listing: List[str], prefix: str) -> Dict[str, str]:
        out = {}
        for rel in env_script_names(listing, prefix):
            content = text(rel)
            if content is not None:
                out["/" + rel] = content
        return out
    environment = environment_of(env_scripts, META_DIR)
    runscript = text(INSPECT_FILES["runscript"])
    if runscript is None and not env_scripts:
        runscript = text(LEGACY_FILES["runscript"])
        legacy_env = text(LEGACY_FILES["environment"])
        if legacy_env is not None:
            environment["/" + LEGACY_FILES["environment"]] = legacy_env
    deffile = text(INSPECT_FILES["deffile"]) if deffile is None else _trimmed(deffile)
    app_meta: Dict[str, Dict[str, object]] = {}
    for name, listing in sorted((apps or {}).items()):
        base = f"{SCIF_APPS}/{name}/scif"
        attrs: Dict[str, object] = {
            "environment": environment_of(listing, base),
            "labels": parse_labels(read(f"{base}/labels.json")),
            "runscript": text(f"{base}/runscript"), "startscript": text(f"{base}/startscript"),
            "test": text(f"{base}/test"),
            "helpfile": text(f"{base}/runscript.help")}
        app_meta[name] = {k: v for k, v in attrs.items() if v}
    return Metadata(labels=parse_labels(read(INSPECT_FILES["labels"])), deffile=deffile,
                    runscript=runscript,
                    startscript=text(INSPECT_FILES["startscript"]),
                    test=text(INSPECT_FILES["test"]), helpfile=text(INSPECT_FILES["helpfile"]),
                    environment=environment or None, apps=app_meta or None)


# ---------------------------------------------------------------- metadata of any image
SIF_METADATA_NAME = "inspect-metadata.json"


def image_metadata(source) -> Metadata:
    """Metadata of an ImageSource (SIF, squashfs or sandbox), read without mounting anything.

    A SIF built by hpccont or Apptainer carries it as a JSON.Generic object (and the definition
    as a Def.FILE object), which is read directly, as ``apptainer inspect`` does; otherwise the
    ``/.singularity.d`` directory (and the SCIF apps' metadata) is unpacked from the squashfs
    filesystem with unsquashfs into a temporary directory.
    """
    if source.kind == "sandbox":
        return tree_metadata(source.path)
    deffile = None
    if source.kind == "sif":
        from . import sif
        image = sif.read_sif(source.path)
        defs = image.find(sif.DATA_DEFFILE)
        if defs:
            deffile = image.read_object(defs[0]).decode("utf-8", "replace")
        stored = _stored_metadata(image, sif)
        if stored is not None:
            if stored.deffile is None and deffile:
                stored.deffile = _trimmed(deffile)   # older writers kept it in Def.FILE only
            return stored
    if source.fs_type != "squashfs":
        from ..errors import ImageError
        raise ImageError(f"{source.path}: cannot read metadata from a {source.fs_type} partition")
    return _squashfs_metadata(source, deffile)


def tree_metadata(root: str, deffile: Optional[str] = None) -> Metadata:
    return read_metadata(dir_reader(root), list_env_dir(root), deffile=deffile,
                         apps=list_apps(root))


def _stored_metadata(image, sif) -> Optional[Metadata]:
    """The first "inspect-metadata.json" object, as Apptainer's inspect reads it."""
    for d in image.find(sif.DATA_GENERIC_JSON):
        if d.name != SIF_METADATA_NAME:
            continue
        try:
            doc = json.loads(image.read_object(d))
        except (ValueError, RecursionError):   # RecursionError: nested too deep
            return None
        return metadata_from_document(doc)
    return None


def _squashfs_metadata(source, deffile: Optional[str]) -> Metadata:
    import shutil
    import tempfile
    from . import squashfs
    tmp = tempfile.mkdtemp(prefix="hpccont-inspect-")
    try:
        root = os.path.join(tmp, "root")
        squashfs.extract(source.path, root, offset=source.offset,
                         paths=[META_DIR, f"{SCIF_APPS}/*/scif", *LEGACY_FILES.values()])
        if not os.path.isdir(root):
            os.mkdir(root)
        return tree_metadata(root, deffile=deffile)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
