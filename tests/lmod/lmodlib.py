"""Helpers for the module tests (a separate module: every test directory has a conftest.py)."""
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import helpers  # noqa: E402

LMOD_INIT = Path("/usr/share/lmod/lmod/init")
SHELLS = {"bash": "/bin/bash", "sh": "/bin/sh"}

# Prints its arguments NUL-terminated between markers, copies stdin, exits with $FAKE_RC.
RECORDER = """#!/bin/sh
printf 'ARGS:'
printf '%s\\0' "$@"
printf '\\nEND\\n'
if [ -n "${FAKE_STDIN-}" ]; then /bin/cat; fi
exit "${FAKE_RC:-0}"
"""


def labelled_rootfs(dest: Path, base: Path, labels: dict, help_text: str = "",
                    apps=()) -> Path:
    """A copy of the busybox rootfs with the given labels, %help text and SCIF apps."""
    shutil.copytree(base, dest, symlinks=True)
    sd = dest / ".singularity.d"
    (sd / "labels.json").write_text(json.dumps(labels, indent=4) + "\n")
    if help_text:
        (sd / "runscript.help").write_text(help_text)
    for app in apps:
        (dest / "scif/apps" / app / "scif").mkdir(parents=True)
        runscript = dest / "scif/apps" / app / "scif/runscript"
        runscript.write_text(f"#!/bin/sh\necho app {app} \"$@\"\n")
        runscript.chmod(0o755)
    return dest


def run_lmod(shell: str, modulepath, body: str, env=None, user=None, **kw):
    """Run ``body`` in a non-interactive ``shell`` after Lmod's init and MODULEPATH."""
    init = LMOD_INIT / ("bash" if shell == "bash" else "sh")
    script = f". {init}\nexport MODULEPATH={shlex.quote(str(modulepath))}\n{body}\n"
    argv = [SHELLS[shell], "-c", script]
    if user:
        return helpers.as_user(argv, user=user, env=env, **kw)
    base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8"}
    base.update(env or {})
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 60)
    return subprocess.run(["env", "-i"] + [f"{k}={v}" for k, v in base.items()] + argv, **kw)


def recorded_args(stdout: str) -> list:
    """The arguments the recorder saw, in order."""
    body = stdout.split("ARGS:", 1)[1].split("\nEND\n", 1)[0]
    return body.split("\0")[:-1]


def build(install, src, out):
    r = subprocess.run([install["hpccont"], "build", "--force", str(out), str(src)],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"hpccont build failed: {r.stderr.strip()}")
    out.chmod(0o644)
    return out
