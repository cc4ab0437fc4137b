"""The real one-node Slurm cluster, shared by every suite that needs one (Slurm, MPI under
srun, modules in batch jobs): imported into tests/conftest.py so that one session runs one
cluster.  Only one cluster may run on a machine at a time (tests/slurm/cluster.py takes a lock
until it stops), so two fixtures each starting their own would wait on each other.

``slurm_cluster`` starts munged (if none answers), slurmctld and slurmd on localhost with a
private config dir, the plugin from this working tree in plugstack.conf and
spank_plugin/cli_filter.lua as the cli_filter; it stops them at the end of the session.
``submit`` runs a Slurm client as the unprivileged user ``hpcuser``.

Nothing a Slurm job needs lives under /tmp (every container binds /tmp, which would hide what a
site's layout needs): the clusters keep their spool, state, TmpFS and config under
/var/lib/hpccont-test and their logs under /var/log/hpccont-test (tests/slurm/cluster.py), and
``site_root`` is this session's directory there for images and job directories.
"""
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import helpers

sys.path.insert(0, str(Path(__file__).resolve().parent / "slurm"))
from cluster import SlurmCluster, remove_tree, site_dir  # noqa: E402

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
def site_root():
    """This session's directory under /var/lib/hpccont-test (0755), outside /tmp: shared images
    and job directories, as a site's /shared or /home would be."""
    d = site_dir("session-")
    yield d
    remove_tree(d)


@pytest.fixture
def site_tmp(site_root, request):
    """A per-test directory outside /tmp that root and hpcuser can write (a job's submit and
    working directory, as under /home or /shared at a site)."""
    (site_root / "work").mkdir(mode=0o755, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix=request.node.name[:40].replace("/", "_") + "-",
                              dir=site_root / "work"))
    d.chmod(0o777)
    return d


@pytest.fixture(scope="session")
def site_images(site_root):
    """The plugstack ``image_dir``: bare names (--container=NAME) are looked up here."""
    d = site_root / "images"
    d.mkdir(mode=0o755)
    return d


def plugstack_text(so, install, site_images, accounting, slurm_conf=None, **extra) -> str:
    """``slurm_conf``: the cluster's private slurm.conf, for what the plugin runs as root (which
    never sees the job's SLURM_CONF)."""
    args = {"hpccont": install["hpccont"], "image_dir": str(site_images),
            "accounting": str(accounting)}
    if slurm_conf:
        args["slurm_conf"] = str(slurm_conf)
    args.update(extra)
    return f"required {so} " + " ".join(f"{k}={v}" for k, v in args.items()) + "\n"


@pytest.fixture(scope="session")
def slurm_cluster(spank_so, install, test_user, site_images):
    _need("slurmctld", "slurmd", "srun", "munged")
    cluster = SlurmCluster(cli_filter=str(PLUGIN_SRC / "cli_filter.lua"))
    cluster.accounting = cluster.log_dir / "accounting" / "steps.jsonl"
    cluster.plugstack = plugstack_text(spank_so, install, site_images, cluster.accounting,
                                       slurm_conf=cluster.conf)
    cluster.default_plugstack = cluster.plugstack
    try:
        cluster.start()
    except RuntimeError as e:
        pytest.fail(f"cannot start the Slurm test cluster: {e}")
    yield cluster
    cluster.stop()


@pytest.fixture
def plugstack(slurm_cluster, spank_so, install, site_images):
    """Change the plugstack arguments for one test (slurmstepd reads the file at each step)."""
    def set_args(**extra):
        slurm_cluster.set_plugstack(plugstack_text(spank_so, install, site_images,
                                                   slurm_cluster.accounting,
                                                   slurm_conf=slurm_cluster.conf, **extra))
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




@pytest.fixture(scope="session")
def site_install(site_root, install, spank_so):
    """``install`` and ``spank_so`` copied outside /tmp, as a site installs them (/opt/...),
    for nodes whose /tmp is their own: same keys as ``install``, plus 'so'."""
    prefix = site_root / "opt"
    shutil.copytree(install["lib"], prefix / "lib")
    paths = helpers.write_launchers(prefix / "bin", prefix / "lib")
    for extra in ("fusecache", "step", "account"):    # beside the launcher, as install-plugin does
        if install.get(extra) is not None:
            shutil.copy(install[extra], prefix / "bin" / Path(install[extra]).name)
    paths["bin"], paths["lib"] = str(prefix / "bin"), str(prefix / "lib")
    shutil.copy(spank_so, prefix / "lib" / "hpccont_spank.so")
    paths["so"] = prefix / "lib" / "hpccont_spank.so"
    subprocess.run(["chmod", "-R", "a+rX", str(prefix)], check=True)
    return paths


@pytest.fixture(scope="session")
def slurm_multinode(site_install, test_user, site_images):
    """Three Slurm nodes on this machine, each slurmd in its own network namespace with its
    own /tmp (tests/slurm/multinode.py), with the same plugin, plugstack arguments and
    cli_filter as ``slurm_cluster`` (the plugin and hpccont from ``site_install``); it may run
    at the same time as that one.  Torn down at the end of the session, and from an atexit hook
    should the session die first."""
    _need("slurmctld", "slurmd", "srun", "munged", "ip", "nsenter", "unshare")
    from multinode import MultiNodeCluster
    cluster = MultiNodeCluster(nodes=3, cli_filter=str(PLUGIN_SRC / "cli_filter.lua"))
    try:
        cluster.accounting = cluster.log_dir / "accounting" / "steps.jsonl"
        cluster.plugstack = plugstack_text(site_install["so"], site_install, site_images,
                                           cluster.accounting, slurm_conf=cluster.conf)
        cluster.default_plugstack = cluster.plugstack
        try:
            cluster.start()
        except RuntimeError as e:
            pytest.fail(f"cannot start the multi-node Slurm test cluster: {e}")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def submit_multinode(slurm_multinode, site_tmp):
    """Like ``submit``, against ``slurm_multinode``; the default directory is outside /tmp."""
    def run(*argv, cwd=None, env=None, timeout=180, **kw):
        e = dict(slurm_multinode.env)
        if env:
            e.update(env)
        cmd = ["sh", "-c", 'cd "$0" && exec "$@"', str(cwd or site_tmp)] + [str(a) for a in argv]
        return helpers.as_user(cmd, env=e, timeout=timeout, **kw)
    return run
