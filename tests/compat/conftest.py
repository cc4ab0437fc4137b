"""Fixtures of the Apptainer compatibility tests.

- ``compat_bin``: a directory where ``hpccont compat install`` put ``apptainer`` and
  ``singularity`` (the installed hpccont's entry points), first on the PATH of ``as_apptainer``.
- ``bash_sif``: a busybox image that also has the host's real ``/bin/bash`` (with its
  libraries): Nextflow's and Snakemake's task lines run ``bash``.
- ``wf_venv``: a virtual environment with Snakemake and cwltool from PyPI, made once per
  machine under /var/cache/hpccont-test (skipped with the reason when PyPI cannot be reached).
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import helpers
from compatlib import compat_env

WF_VENV = Path(os.environ.get("HPCCONT_WF_VENV", "/var/cache/hpccont-test/wf-venv"))
WF_PACKAGES = ("snakemake", "cwltool")


@pytest.fixture(scope="session")
def compat_bin(install, world_tmp):
    d = world_tmp / "compat-bin"
    d.mkdir()
    r = subprocess.run([install["hpccont"], "compat", "install", str(d)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    subprocess.run(["chmod", "-R", "a+rX", str(d)], check=True)
    return d


@pytest.fixture(scope="session")
def as_apptainer(compat_bin, test_user):
    """as_apptainer(*args, prog="apptainer", env=None, cwd=None): the compat name as the test user."""
    def run(*args, prog="apptainer", env=None, cwd=None, **kw):
        argv = [str(compat_bin / prog), *map(str, args)]
        if cwd:
            argv = ["sh", "-c", 'cd "$0" && exec "$@"', str(cwd)] + argv
        return helpers.as_user(argv, env=compat_env(compat_bin, env), **kw)
    return run


def _copy_with_libraries(program: str, root: Path) -> None:
    """``program`` and the shared libraries ldd names, at the same paths inside ``root``."""
    out = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
    paths = [program]
    for line in out.splitlines():
        parts = line.split()
        for p in parts:
            if p.startswith("/"):
                paths.append(p)
                break
    for p in paths:
        real = os.path.realpath(p)
        dest = root / p.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        shutil.copy2(real, dest)


@pytest.fixture(scope="session")
def bash_rootfs(world_tmp):
    root = helpers.make_busybox_rootfs(world_tmp / "images" / "bash-rootfs")
    (root / "bin/bash").unlink(missing_ok=True)
    _copy_with_libraries("/bin/bash", root)
    return root


@pytest.fixture(scope="session")
def bash_sif(bash_rootfs, world_tmp, install):
    out = world_tmp / "images" / "bash.sif"
    r = subprocess.run([install["hpccont"], "build", str(out), str(bash_rootfs)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out.chmod(0o755)
    return out


@pytest.fixture(scope="session")
def wf_venv():
    """Snakemake and cwltool from PyPI in a venv of /usr/bin/python3 (readable by every user)."""
    python = WF_VENV / "bin" / "python"
    ready = WF_VENV / ".hpccont-ready"
    if not ready.exists():
        if WF_VENV.exists():
            shutil.rmtree(WF_VENV)
        WF_VENV.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(WF_VENV)], check=True)
        r = subprocess.run([str(python), "-m", "pip", "install", "-q", *WF_PACKAGES],
                           capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            shutil.rmtree(WF_VENV, ignore_errors=True)
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"cannot install {' '.join(WF_PACKAGES)} from PyPI: {last}")
        ready.write_text("ok\n")
    subprocess.run(["chmod", "-R", "a+rX", str(WF_VENV)], check=True)
    return WF_VENV
