"""The real one-node Slurm cluster, shared by every suite that needs one (Slurm, MPI under
srun, modules in batch jobs): imported into tests/conftest.py so that one session runs one
cluster.  Only one cluster may run on a machine at a time (tests/slurm/cluster.py takes a lock
until it stops), so two fixtures each starting their own would wait on each other.

``slurm_cluster`` starts munged (if none answers), slurmctld and slurmd on localhost with a
private config dir, the plugin from this working tree in plugstack.conf and
spank_plugin/cli_filter.lua as the cli_filter; it stops them at the end of the session.
``submit`` runs a Slurm client as the unprivileged user ``hpcuser``.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import helpers

sys.path.insert(0, str(Path(__file__).resolve().parent / "slurm"))
from cluster import SlurmCluster  # noqa: E402

PLUGIN_SRC = helpers.REPO / "spank_plugin"


def _need(*cmds):
    missing = [c for c in cmds if shutil.which(c) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")


@pytest.fixture(scope="session")
def spank_so(world_tmp):
    """The plugin built here against /usr/include/slurm, as 'hpccont slurm install-plugin' does."""
    _need("make", "cc")
    if not Path("/usr/include/slurm/spank.h").exists():
        pytest.skip("libslurm-dev is not installed")
    out = world_tmp / "spank"
    out.mkdir()
    r = subprocess.run(["make", "-C", str(PLUGIN_SRC), f"O={out}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    so = out / "hpccont_spank.so"
    so.chmod(0o755)
    return so


@pytest.fixture(scope="session")
def site_images(world_tmp):
    """The plugstack ``image_dir``: bare names (--container=NAME) are looked up here."""
    d = world_tmp / "site-images"
    d.mkdir(mode=0o755)
    return d


def plugstack_text(so, install, site_images, accounting, **extra) -> str:
    args = {"hpccont": install["hpccont"], "image_dir": str(site_images),
            "accounting": str(accounting)}
    args.update(extra)
    return f"required {so} " + " ".join(f"{k}={v}" for k, v in args.items()) + "\n"


@pytest.fixture(scope="session")
def slurm_cluster(spank_so, install, test_user, site_images):
    _need("slurmctld", "slurmd", "srun", "munged")
    cluster = SlurmCluster(cli_filter=str(PLUGIN_SRC / "cli_filter.lua"))
    cluster.accounting = cluster.dir / "accounting" / "steps.jsonl"
    cluster.plugstack = plugstack_text(spank_so, install, site_images, cluster.accounting)
    cluster.default_plugstack = cluster.plugstack
    try:
        cluster.start()
    except RuntimeError as e:
        pytest.fail(f"cannot start the Slurm test cluster: {e}")
    yield cluster
    cluster.stop()
    shutil.rmtree(cluster.dir, ignore_errors=True)


@pytest.fixture
def plugstack(slurm_cluster, spank_so, install, site_images):
    """Change the plugstack arguments for one test (slurmstepd reads the file at each step)."""
    def set_args(**extra):
        slurm_cluster.set_plugstack(plugstack_text(spank_so, install, site_images,
                                                   slurm_cluster.accounting, **extra))
    yield set_args
    slurm_cluster.set_plugstack(slurm_cluster.default_plugstack)


@pytest.fixture
def submit(slurm_cluster, shared_tmp):
    """submit("srun", "-n", "2", ..., cwd=DIR, env={...}, input=...) as hpcuser."""
    def run(*argv, cwd=None, env=None, timeout=120, **kw):
        e = dict(slurm_cluster.env)
        if env:
            e.update(env)
        cmd = [str(a) for a in argv]
        cmd = ["sh", "-c", 'cd "$0" && exec "$@"', str(cwd or shared_tmp)] + cmd
        return helpers.as_user(cmd, env=e, timeout=timeout, **kw)
    return run


