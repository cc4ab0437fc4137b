"""SCIF apps (%appinstall, %apprun, %appenv, %applabels, %apphelp, %appfiles, %apptest).

Laid out the way Apptainer does, so ``run --app NAME`` works for images from either tool::

    /scif/apps/NAME/            the app's root: %appfiles land here, %appinstall runs here
    /scif/apps/NAME/bin, lib    on PATH / LD_LIBRARY_PATH when the app runs
    /scif/apps/NAME/scif/       runscript, test, runscript.help, labels.json, env/*.sh
    /scif/data/NAME/input, output
    /.singularity.d/env/94-appsbase.sh   SCIF_APP*_NAME variables for every app
"""
import json
import os
import re
from typing import Dict, List

SCIF = "scif"
APPS_ENV = ".singularity.d/env/94-appsbase.sh"


def app_path(app: str) -> str:
    return f"/scif/apps/{app}"


def app_dir(rootfs: str, app: str) -> str:
    return os.path.join(rootfs, "scif", "apps", app)


def _var(app: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", app)


def app_env(app: str) -> Dict[str, str]:
    root = app_path(app)
    return {"SCIF_APPNAME": app, "SCIF_APPROOT": root, "SCIF_APPMETA": f"{root}/scif",
            "SCIF_DATA": "/scif/data", "SCIF_APPDATA": f"/scif/data/{app}",
            "SCIF_APPINPUT": f"/scif/data/{app}/input", "SCIF_APPOUTPUT": f"/scif/data/{app}/output",
            "SCIF_APPBIN": f"{root}/bin", "SCIF_APPLIB": f"{root}/lib"}


def app_order(stage) -> List[str]:
    """Apps in the order their first section appears in the file."""
    seen: List[str] = []
    for section in stage.sections:
        if section.app and section.app not in seen:
            seen.append(section.app)
    return seen


def prepare_app(rootfs: str, app: str) -> None:
    root = app_dir(rootfs, app)
    for d in ("bin", "lib", "scif/env"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for d in ("input", "output"):
        os.makedirs(os.path.join(rootfs, "scif", "data", app, d), exist_ok=True)


def _write(path: str, text: str, mode: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def base_env_script(app: str) -> str:
    env = app_env(app)
    lines = ["#!/bin/sh"] + [f"{k}={v}" for k, v in env.items()]
    lines.append("export " + " ".join(env))
    return "\n".join(lines) + "\n"


# Sourced with every other env script: when an app is selected (``run --app NAME`` sets
# APPTAINER_APPNAME, or SINGULARITY_APPNAME for older tools), its bin/ and lib/ come first
# on the paths and its own env scripts are sourced, as in images Apptainer builds.
ACTIVE_APP = """if test -z "${APPTAINER_APPNAME:-}" && test -n "${SINGULARITY_APPNAME:-}"; then
    APPTAINER_APPNAME="$SINGULARITY_APPNAME"
fi
if test -n "${APPTAINER_APPNAME:-}"; then
    export APPTAINER_APPNAME
    if test -d "/scif/apps/${APPTAINER_APPNAME}/"; then
        SCIF_APPS=/scif/apps
        export SCIF_APPS
        if test -d "/scif/apps/${APPTAINER_APPNAME}/lib"; then
            LD_LIBRARY_PATH="/scif/apps/${APPTAINER_APPNAME}/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            export LD_LIBRARY_PATH
        fi
        PATH="/scif/apps/${APPTAINER_APPNAME}/bin:/scif/apps/${APPTAINER_APPNAME}:$PATH"
        export PATH
        for script in "/scif/apps/${APPTAINER_APPNAME}"/scif/env/*.sh; do
            if test -f "$script"; then
                . "$script"
            fi
        done
    else
        echo "Could not locate the container application: ${APPTAINER_APPNAME}" >&2
        exit 1
    fi
fi
"""


def apps_env_script(apps: List[str]) -> str:
    lines = ["#!/bin/sh"]
    for app in apps:
        v, root = _var(app), app_path(app)
        pairs = {f"SCIF_APPDATA_{v}": f"/scif/data/{app}", f"SCIF_APPMETA_{v}": f"{root}/scif",
                 f"SCIF_APPROOT_{v}": root, f"SCIF_APPBIN_{v}": f"{root}/bin",
                 f"SCIF_APPLIB_{v}": f"{root}/lib", f"SCIF_APPRUN_{v}": f"{root}/scif/runscript",
                 f"SCIF_APPENV_{v}": f"{root}/scif/env/90-environment.sh"}
        lines.append(f"## App Global Exports For: {app}")
        lines += [f"{k}={val}" for k, val in pairs.items()]
        lines.append("export " + " ".join(pairs))
    return "\n".join(lines) + "\n" + ACTIVE_APP


def write_apps(rootfs: str, stage) -> None:
    apps = app_order(stage)
    for app in apps:
        prepare_app(rootfs, app)
        secs = stage.apps[app]
        meta = os.path.join(app_dir(rootfs, app), SCIF)
        _write(os.path.join(meta, "env", "01-base.sh"), base_env_script(app), 0o755)
        scripts = {"apprun": "runscript", "apptest": "test", "appstart": "startscript"}
        for name, fname in scripts.items():
            sec = secs.get(name)
            if sec is not None:
                _write(os.path.join(meta, fname),
                       f"#!{sec.interpreter or '/bin/sh'}\n\n{sec.body}\n", 0o755)
        if "appenv" in secs:
            _write(os.path.join(meta, "env", "90-environment.sh"),
                   "#!/bin/sh\n# Custom environment shell code should follow\n\n"
                   + secs["appenv"].body + "\n", 0o755)
        if "apphelp" in secs:
            _write(os.path.join(meta, "runscript.help"), secs["apphelp"].body.strip("\n") + "\n",
                   0o644)
        labels = {"SCIF_APP_NAME": app}
        if "applabels" in secs:
            for raw in secs["applabels"].body.split("\n"):
                line = raw.strip()
                if line and not line.startswith("#"):
                    key, _, value = line.partition(" ")
                    labels[key] = value.strip()
        _write(os.path.join(meta, "labels.json"),
               json.dumps(dict(sorted(labels.items())), indent=4) + "\n", 0o644)
    _write(os.path.join(rootfs, APPS_ENV), apps_env_script(apps), 0o755)
