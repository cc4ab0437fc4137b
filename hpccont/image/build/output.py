"""Writing OUT so that an interrupted or failed build never leaves a partial image.

Everything is written to a hidden sibling of OUT (same filesystem) and renamed over OUT only
once complete; rename(2) is atomic, so readers see the old image or the new one, never half.
"""
import os
import shutil
from pathlib import Path

from ...errors import BuildError
from ..leftovers import partial_name, sweep


def check_out(out: Path, *, force: bool, update: bool, sandbox: bool) -> None:
    """Refuse to clobber OUT without --force; --update needs an existing sandbox."""
    if update:
        if not out.is_dir():
            raise BuildError(f"{out}: --update needs an existing sandbox directory")
        return
    if out.is_symlink() or out.exists():
        if not force:
            raise BuildError(f"{out}: already exists (use --force to overwrite)")
        if out.is_dir() and not sandbox:
            raise BuildError(f"{out}: is a directory; build a SIF elsewhere or use --sandbox")
    parent = out.parent
    sweep(str(parent))          # what killed builds left here (leftovers.py)
    if not parent.is_dir():
        raise BuildError(f"{out}: parent directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BuildError(f"{out}: cannot write in {parent} (permission denied)")


def partial_path(out: Path) -> Path:
    return out.parent / partial_name(out.name)


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def commit(partial: Path, out: Path) -> None:
    """Put the finished ``partial`` in place of OUT (a directory OUT is replaced whole)."""
    if out.is_dir() and not out.is_symlink():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
        os.rename(partial, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(partial, out)
