"""Write the entry-point scripts ``hpccont``, ``container-exec`` and ``run-singularity``.

pip's generated console scripts start the interpreter with site processing and import ``re``:
~5 ms of a launch budget of ~20 ms, paid by every task of every job.  These scripts run the
interpreter isolated and without ``site`` (``-IS``: no user site, no PYTHON* variables, no
.pth files) and put the package's own directory on ``sys.path`` directly.  ``make install``
replaces pip's scripts with these:  python -m hpccont.cli.launchers BINDIR
"""
import os
import sys

ENTRY_POINTS = {"hpccont": "main", "container-exec": "container_exec_main",
                "run-singularity": "run_singularity_main"}

TEMPLATE = """#!{python} -IS
import sys
sys.path[0:0] = {paths!r}
from hpccont.cli.main import {func}
sys.exit({func}())
"""


def write_launchers(bindir: str, libdir: str, python: str = sys.executable,
                    extra_paths: tuple = ()) -> dict:
    """``libdir`` holds the hpccont package; ``extra_paths`` (e.g. where PyYAML lives) follow it."""
    os.makedirs(bindir, exist_ok=True)
    paths = {}
    for name, func in ENTRY_POINTS.items():
        path = os.path.join(bindir, name)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(TEMPLATE.format(python=python, paths=[libdir, *extra_paths], func=func))
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
        paths[name] = path
    return paths


def package_parent() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m hpccont.cli.launchers BINDIR")
    for p in write_launchers(sys.argv[1], package_parent()).values():
        print(p)
