"""Python packages with bytecode, for checking that built images keep their pycs valid.

``add_package`` writes modules (``.py`` + ``__pycache__/*.pyc`` compiled by /usr/bin/python3)
into a tree; ``check_tree`` validates every pyc of a tree against its source with the import
system's own checks (``importlib._bootstrap_external``), as an interpreter in the image would;
``python_verbose`` imports modules from a tree with ``python3 -v`` and returns what it printed.
"""
import _imp
import os
import subprocess
import sys
from importlib import _bootstrap_external as bootstrap
from importlib.util import source_from_cache
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from hpccont.rootpath import resolve  # noqa: E402

PYTHON = "/usr/bin/python3"
APP = "usr/lib/pyapp"                 # where add_package puts its modules, in the image
OLD = 1_500_000_000                   # an mtime older than any clamp the tests use
RECENT = 1_700_000_000                # an mtime newer than SDE, the clamp given in tests
SDE = 1_600_000_000

COMPILE = r"""
import os, py_compile, sys
mode = {"timestamp": py_compile.PycInvalidationMode.TIMESTAMP,
        "checked": py_compile.PycInvalidationMode.CHECKED_HASH}
for spec in sys.argv[1:]:
    path, how, opt = spec.split(":")
    py_compile.compile(path, invalidation_mode=mode[how], optimize=int(opt), doraise=True)
"""


def compile_files(specs: List[str], env_extra: Dict[str, str] = None) -> None:
    """``path:timestamp|checked:OPT`` each, with /usr/bin/python3 (its own cache tag)."""
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    env.update(env_extra or {})
    subprocess.run([PYTHON, "-c", COMPILE, *specs], check=True, env=env)


def add_package(root: Path, where: str = APP) -> Path:
    """Modules with old and recent source times, a package with an optimised pyc, a source
    reached through a symlink, a checked-hash pyc and one pyc that is stale from the start."""
    app = root / where
    (app / "pkg").mkdir(parents=True, exist_ok=True)
    share = root / "usr/share/pyapp"
    share.mkdir(parents=True, exist_ok=True)
    files = {"oldmod.py": ("OLD = 1\n", OLD), "recentmod.py": ("RECENT = 2\n", RECENT),
             "pkg/__init__.py": ("from . import sub\n", None), "pkg/sub.py": ("S = 3\n", RECENT),
             "hashmod.py": ("H = 4\n", RECENT), "stalemod.py": ("STALE = 5\n", OLD)}
    for rel, (text, mtime) in files.items():
        (app / rel).write_text(text)
        if mtime is not None:
            os.utime(app / rel, (mtime, mtime))
    (share / "linked.py").write_text("L = 6\n")
    os.utime(share / "linked.py", (RECENT, RECENT))
    rel_target = os.path.relpath(share / "linked.py", app)
    (app / "linkmod.py").symlink_to(rel_target)
    compile_files([f"{app}/oldmod.py:timestamp:0", f"{app}/recentmod.py:timestamp:0",
                   f"{app}/pkg/__init__.py:timestamp:0", f"{app}/pkg/__init__.py:timestamp:1",
                   f"{app}/pkg/sub.py:timestamp:0", f"{app}/linkmod.py:timestamp:0",
                   f"{app}/hashmod.py:checked:0", f"{app}/stalemod.py:timestamp:0"])
    os.utime(app / "stalemod.py", (OLD + 10, OLD + 10))    # its pyc no longer matches
    return app


MODULES = ("oldmod", "recentmod", "pkg", "pkg.sub", "linkmod", "hashmod")


def check_tree(root: Path) -> Tuple[List[str], List[str]]:
    """(valid, stale): image paths of the pycs under ``root`` that the import system accepts
    for their source, and of those it rejects.  Pycs without a source are not counted."""
    valid, stale = [], []
    root = Path(root)
    for dirpath, _, filenames in os.walk(root):
        if os.path.basename(dirpath) != "__pycache__":
            continue
        for name in sorted(filenames):
            pyc = os.path.join(dirpath, name)
            try:
                src = source_from_cache(pyc)
            except ValueError:
                continue
            if not os.path.lexists(src):
                continue
            src = resolve(str(root), os.path.relpath(src, root))
            image_path = "/" + os.path.relpath(pyc, root)
            data = Path(pyc).read_bytes()
            st = os.stat(src)
            try:
                flags = bootstrap._classify_pyc(data, name, {})
                if flags & 0b1:
                    if flags & 0b10:
                        digest = _imp.source_hash(bootstrap._RAW_MAGIC_NUMBER,
                                                  Path(src).read_bytes())
                        bootstrap._validate_hash_pyc(data, digest, name, {})
                else:
                    bootstrap._validate_timestamp_pyc(data, int(st.st_mtime), st.st_size,
                                                      name, {})
            except ImportError:
                stale.append(image_path)
            else:
                valid.append(image_path)
    return valid, stale


PACKAGE_PYCS = 7                      # valid pycs add_package writes


def assert_package_valid(root: Path, where: str = APP, expect: int = PACKAGE_PYCS) -> None:
    """``expect`` valid pycs under ``where`` in ``root`` (add_package's and any others), and
    the one stale from the start still stale (a stale pyc is never made to look valid)."""
    valid, stale = check_tree(root)
    prefix = f"/{where}/"
    ours_valid = sorted(p for p in valid if p.startswith(prefix))
    ours_stale = sorted(p for p in stale if p.startswith(prefix))
    tag = "cpython-311"
    assert ours_stale == [f"{prefix}__pycache__/stalemod.{tag}.pyc"], ours_stale
    assert len(ours_valid) == expect, ours_valid
    others = [p for p in stale if not p.startswith(prefix)]
    assert not others, others


def python_verbose(root: Path, modules=MODULES, where: str = APP) -> str:
    """``python3 -v`` importing ``modules`` from ``root``/``where`` (without writing pycs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(Path(root) / where))
    r = subprocess.run([PYTHON, "-v", "-c", "import " + ", ".join(modules)], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stderr


def recompiled(verbose: str) -> List[str]:
    """The lines of ``python3 -v`` output that say a module was compiled from its source."""
    return [line for line in verbose.splitlines()
            if "bytecode is stale" in line or
            (line.startswith("# code object from ") and line.rstrip("'").endswith(".py"))]
