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
    recipe), 'py': the Python entry points both key their recipes on}."""
    if not shutil.which("cc"):
        pytest.skip("no C compiler")
    # The Python entry points behind the launcher, with it beside them as `make install`
    # leaves them (runtime/cold.py records only where the launcher will read the recipe).
    py = world_tmp / "fast-py"
    py.mkdir(exist_ok=True)
    helpers.write_launchers(py, install["lib"])
    helpers.build_fuse_cache(py)
    out = {}
    for name, bindir in (("dir", py), ("strict", "/nonexistent")):
        d = world_tmp / f"fast-{name}"
        d.mkdir(exist_ok=True)
        # both key their recipes on the same entry point (the strict one cannot run it)
        subprocess.run(["make", "-s", "-B", "-C", str(helpers.REPO / "launcher"), f"O={d}",
                        f"PY_BINDIR={bindir}", f"ENTRY_BINDIR={py}"], check=True)
        for n in ("hpccont", "run-singularity"):
            (d / n).unlink(missing_ok=True)
            (d / n).symlink_to(d / "hpccont-fast")
        subprocess.run(["chmod", "-R", "a+rX", str(d)], check=True)
        out[name] = d
    out["py"] = py
    (py / "hpccont-fast").unlink(missing_ok=True)
    (py / "hpccont-fast").symlink_to(out["dir"] / "hpccont-fast")
    subprocess.run(["chmod", "-R", "a+rX", str(py)], check=True)
    return out
