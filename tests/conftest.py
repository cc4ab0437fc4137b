"""Session fixtures shared by every test suite.

- ``install``: the working tree's package copied to a world-readable directory with entry-point
  scripts, so that the unprivileged test user runs exactly this code (the repository itself may
  live under a directory that user cannot read).
- ``test_user``: a real second, non-root user created with useradd.
- ``busybox_rootfs`` / ``busybox_squashfs`` / ``busybox_sif``: real images (busybox-static,
  mksquashfs, the SIF writer).
- ``shared_tmp``: a per-test directory both root and the test user can write.
"""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import helpers  # noqa: E402

sys.path.insert(0, str(helpers.REPO))

# The Slurm cluster and its plugin: one per session, for every suite (see slurm_fixtures.py).
from slurm_fixtures import (plugstack, site_images, site_install, site_root, site_tmp,  # noqa: E402,F401
                            slurm_cluster, slurm_multinode, spank_so, submit, submit_multinode)


@pytest.fixture(scope="session")
def world_tmp():
    """A session directory (0755) under /tmp that every user can traverse."""
    d = Path(tempfile.mkdtemp(prefix="hpccont-tests-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def shared_tmp(world_tmp, request):
    d = Path(tempfile.mkdtemp(prefix=request.node.name[:40].replace("/", "_") + "-", dir=world_tmp))
    d.chmod(0o777)
    return d


@pytest.fixture
def user_dir(shared_tmp, test_user):
    """A directory of the test user's own (for links, env files, overlays they make)."""
    d = shared_tmp / "mine"
    d.mkdir()
    os.chown(d, test_user.pw_uid, test_user.pw_gid)
    return d


@pytest.fixture(scope="session")
def install(world_tmp):
    """{'hpccont': path, 'container-exec': path, 'run-singularity': path, 'bin': dir, 'lib': dir,
    'fusecache': the image server's caching adapter beside them, 'step': the Slurm step builder
    and 'account': the accounting writer beside them, each None where it cannot be built}."""
    lib = helpers.copy_package(world_tmp / "lib")      # byte-compiled, as installs are
    subprocess.run(["chmod", "-R", "a+rX", str(lib)], check=True)
    paths = helpers.write_launchers(world_tmp / "bin", lib)
    paths["bin"] = str(world_tmp / "bin")
    paths["fusecache"] = helpers.build_fuse_cache(world_tmp / "bin")   # as make install does
    paths["step"] = helpers.build_step_builder(world_tmp / "bin")     # the same
    paths["account"] = helpers.build_account_writer(world_tmp / "bin")
    paths["lib"] = str(lib)
    return paths


@pytest.fixture(scope="session")
def hpccont(install):
    """Run the installed ``hpccont`` as the current user; returns CompletedProcess."""
    def run(*args, env=None, **kw):
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 120)
        e = dict(os.environ)
        e.pop("HPCCONT_CONFIG", None)
        if env:
            e.update(env)
        return subprocess.run([install["hpccont"], *map(str, args)], env=e, **kw)
    return run


@pytest.fixture(scope="session")
def test_user():
    if os.geteuid() != 0:
        pytest.skip("creating the second, unprivileged test user needs root")
    return helpers.ensure_test_user()


@pytest.fixture(scope="session")
def hpccont_user(install, test_user):
    """Run the installed ``hpccont`` as the unprivileged test user."""
    def run(*args, env=None, cwd=None, **kw):
        argv = [install["hpccont"], *map(str, args)]
        if cwd:
            argv = ["sh", "-c", 'cd "$0" && exec "$@"', str(cwd)] + argv
        return helpers.as_user(argv, env=env, **kw)
    return run


@pytest.fixture(scope="session")
def busybox_rootfs(world_tmp):
    return helpers.make_busybox_rootfs(world_tmp / "images" / "busybox-rootfs")


@pytest.fixture(scope="session")
def busybox_squashfs(busybox_rootfs, world_tmp):
    return helpers.mksquashfs(busybox_rootfs, world_tmp / "images" / "busybox.sqsh")


@pytest.fixture(scope="session")
def busybox_sif(busybox_rootfs, world_tmp, install):
    out = world_tmp / "images" / "busybox.sif"
    r = subprocess.run([install["hpccont"], "build", str(out), str(busybox_rootfs)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"hpccont build failed: {r.stderr.strip()}")
    out.chmod(0o755)
    return out
