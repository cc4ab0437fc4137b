"""Fixtures of the runtime tests."""
import shutil
import subprocess

import pytest

import helpers


@pytest.fixture(scope="session")
def fast(install, world_tmp, test_user):
    """launcher/ built in front of this run's Python entry points: {'dir': a directory with
    hpccont and run-singularity, 'strict': the same names built with no Python behind them (a
    launch that works there took a C path: joined a shared container, or built one from a cold
    recipe)}."""
    if not shutil.which("cc"):
        pytest.skip("no C compiler")
    out = {}
    for name, bindir in (("dir", install["bin"]), ("strict", "/nonexistent")):
        d = world_tmp / f"fast-{name}"
        d.mkdir(exist_ok=True)
        subprocess.run(["make", "-s", "-C", str(helpers.REPO / "launcher"), f"O={d}",
                        f"PY_BINDIR={bindir}"], check=True)
        for n in ("hpccont", "run-singularity"):
            (d / n).unlink(missing_ok=True)
            (d / n).symlink_to(d / "hpccont-fast")
        subprocess.run(["chmod", "-R", "a+rX", str(d)], check=True)
        out[name] = d
    return out
