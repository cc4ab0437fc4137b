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
from typing import Callable, Dict, List, Optional

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
}


@dataclass
class Metadata:
    """What ``inspect`` reports about an image; the same fields Apptainer's inspect JSON has."""
    labels: Dict[str, str]
    deffile: Optional[str] = None
    runscript: Optional[str] = None
    startscript: Optional[str] = None
    test: Optional[str] = None
    helpfile: Optional[str] = None
    environment: Optional[Dict[str, str]] = None   # env script path -> content

    def attributes(self) -> dict:
        out: dict = {"labels": self.labels}
        for key in ("deffile", "runscript", "startscript", "test", "helpfile"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.environment:
            out["environment"] = self.environment
        return out

    def to_json(self) -> str:
        """The document ``apptainer inspect --json`` prints (and hpccont stores in the SIF)."""
        return json.dumps({"data": {"attributes": self.attributes()}, "type": "container"},
                          indent=4, sort_keys=False)


# ---------------------------------------------------------------- writing
def _write_missing(path: str, content: str, mode: int) -> None:
    if os.path.lexists(path):
        return
    with open(path, "w") as f:
        f.write(content)
    os.chmod(path, mode)


def write_layout(root: str, *, runscript: Optional[str] = None, startscript: Optional[str] = None,
                 test: Optional[str] = None, helpfile: Optional[str] = None,
                 environment: Optional[str] = None, labels: Optional[Dict[str, str]] = None) -> None:
    """Complete the ``/.singularity.d`` layout under ``root``.

    Existing files are kept; the explicit arguments replace the corresponding file (that is how
    a build's %runscript, %test, %help, %environment and %labels land).  ``labels`` are merged
    into labels.json.
    """
    meta = os.path.join(root, META_DIR)
    for d in ("actions", "env", "libs"):
        os.makedirs(os.path.join(meta, d), exist_ok=True)
    for name, body in ACTIONS.items():
        _write_missing(os.path.join(meta, "actions", name), body, 0o755)
    for name, body in ENV_SCRIPTS.items():
        _write_missing(os.path.join(meta, "env", name), body, 0o755)
    explicit = {"runscript": runscript, "startscript": startscript, "test": test,
                "runscript.help": helpfile}
    for name, body in explicit.items():
        if body is not None:
            _replace(os.path.join(meta, name), body, 0o644 if name == "runscript.help" else 0o755)
    if environment is not None:
        _replace(os.path.join(meta, "env", "90-environment.sh"), environment, 0o755)
    _write_missing(os.path.join(meta, "runscript"), DEFAULT_RUNSCRIPT, 0o755)
    _write_missing(os.path.join(meta, "startscript"), DEFAULT_STARTSCRIPT, 0o755)
    merged = read_labels_dir(root)
    merged.update(labels or {})
    _replace(os.path.join(meta, "labels.json"), labels_json(merged), 0o644)
    for link, target in SYMLINKS.items():
        path = os.path.join(root, link)
        if not os.path.lexists(path):
            os.symlink(target, path)


def _replace(path: str, content: str, mode: int) -> None:
    if os.path.lexists(path) and not os.path.isfile(path):
        os.unlink(path)
    with open(path, "w") as f:
        f.write(content)
    os.chmod(path, mode)


def labels_json(labels: Dict[str, str]) -> str:
    return json.dumps(dict(sorted(labels.items())), indent=4) + "\n"


def read_labels_dir(root: str) -> Dict[str, str]:
    return parse_labels(_read_dir_file(root, INSPECT_FILES["labels"]))


def parse_labels(raw: Optional[bytes]) -> Dict[str, str]:
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
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


def env_script_names(listing: List[str]) -> List[str]:
    """The env scripts among paths of an image listing, in the order actions source them."""
    prefix = META_DIR + "/env/"
    return sorted(p for p in listing if p.startswith(prefix) and p.endswith(".sh")
                  and "/" not in p[len(prefix):])


def list_env_dir(root: str) -> List[str]:
    env = os.path.join(root, META_DIR, "env")
    try:
        return [f"{META_DIR}/env/{n}" for n in os.listdir(env)]
    except OSError:
        return []


def read_metadata(read: Reader, env_scripts: List[str], deffile: Optional[str] = None) -> Metadata:
    def text(rel: str) -> Optional[str]:
        raw = read(rel)
        return None if raw is None else raw.decode("utf-8", "replace")
    environment = {}
    for rel in env_script_names(env_scripts):
        content = text(rel)
        if content is not None:
            environment["/" + rel] = content
    return Metadata(labels=parse_labels(read(INSPECT_FILES["labels"])), deffile=deffile,
                    runscript=text(INSPECT_FILES["runscript"]),
                    startscript=text(INSPECT_FILES["startscript"]),
                    test=text(INSPECT_FILES["test"]), helpfile=text(INSPECT_FILES["helpfile"]),
                    environment=environment or None)
