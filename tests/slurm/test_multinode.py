"""srun / sbatch with --container across three nodes (tests/slurm/multinode.py: one slurmd per
network namespace), submitted by hpcuser from a directory outside /tmp, with an image outside
/tmp: the site layout (spool, TmpFS, images, working directories) is what a real cluster has,
and nothing works only because every container binds /tmp.

The image's /etc/hostname says "container" and its /etc/os-release names the test image; the
host names node1..node3 come from each node's UTS namespace, so ``hostname`` tells on which
node a task ran and ``cat /etc/hostname`` that it ran in the image.
"""
import os
import re
import time
from pathlib import Path

import pytest

import helpers

pytestmark = [pytest.mark.slurm, pytest.mark.multinode, pytest.mark.rootless,
              pytest.mark.timeout(300)]

NODES = ["node1", "node2", "node3"]
OS_RELEASE = 'PRETTY_NAME="hpccont multinode test image"\nNAME="hpccont-test"\nID=hpccont-test\n'


@pytest.fixture(scope="session")
def mn_image(site_root, test_user):
    """A busybox squashfs outside /tmp, readable by hpcuser, with its own /etc/os-release."""
    root = helpers.make_busybox_rootfs(site_root / "multinode-rootfs")
    (root / "etc" / "os-release").write_text(OS_RELEASE)
    d = site_root / "multinode-images"
    d.mkdir(mode=0o755, exist_ok=True)
    image = helpers.mksquashfs(root, d / "busybox.sqsh")
    image.chmod(0o644)
    return image


@pytest.fixture
def mn_plugstack(slurm_multinode, site_install, site_images):
    """Change the multi-node cluster's plugstack arguments for one test."""
    from slurm_fixtures import plugstack_text

    def set_args(**extra):
        slurm_multinode.set_plugstack(plugstack_text(site_install["so"], site_install, site_images,
                                                     slurm_multinode.accounting,
                                                     slurm_conf=slurm_multinode.conf, **extra))
    yield set_args
    slurm_multinode.set_plugstack(slurm_multinode.default_plugstack)


def _ok(r):
    assert r.returncode == 0, f"rc={r.returncode}\nstdout:{r.stdout}\nstderr:{r.stderr}"
    return r


def _lines(text):
    return [line for line in text.splitlines() if line.strip()]


def _wait_for(condition, seconds: float = 30.0) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return bool(condition())


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def _user_processes(cluster, test_user):
    """(pid, node, command line) of every process of hpcuser in a node's namespace."""
    out = []
    for node in NODES:
        for pid in cluster.node_pids(node):
            try:
                if os.stat(f"/proc/{pid}").st_uid != test_user.pw_uid:
                    continue
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if _running(pid):
                out.append((pid, node, cmd.strip()))
    return out


def _fuse_by_node(cluster, image):
    """{node: [pid]} of the FUSE servers that mount ``image``."""
    found = {}
    for pid, _cmd in helpers.fuse_processes(str(image)):
        if _running(pid):
            found.setdefault(cluster.node_of(pid), []).append(pid)
    return found


def _nothing_left(cluster, test_user, image):
    """No task, keeper or FUSE server on any node, no mount of the image on the host."""
    _wait_for(lambda: not _user_processes(cluster, test_user)
              and not _fuse_by_node(cluster, image), 30)
    assert not _user_processes(cluster, test_user), "left on the nodes"
    assert not _fuse_by_node(cluster, image), "FUSE server left"
    assert not helpers.mounts_mentioning(str(image))


# -- srun across nodes -----------------------------------------------------------------------------
def test_cluster_has_three_nodes_in_their_own_namespaces(slurm_multinode):
    r = _ok(slurm_multinode.run(["sinfo", "-h", "-N", "-o", "%N %T"]))
    assert sorted(line.split()[0] for line in _lines(r.stdout)) == NODES
    ns = {os.stat(f"/run/netns/{slurm_multinode.netns(n)}").st_ino for n in NODES}
    assert len(ns) == 3 and os.stat("/proc/self/ns/net").st_ino not in ns
    paths = re.findall(r"=(?:socket=)?(/\S*)", slurm_multinode.conf.read_text())
    assert paths and not [p for p in paths if re.match(r"/tmp(/|$)", p)], paths


def test_srun_image_on_every_node(submit_multinode, mn_image):
    r = _ok(submit_multinode("srun", "-N3", f"--container={mn_image}", "cat", "/etc/hostname"))
    assert _lines(r.stdout) == ["container"] * 3
    r = _ok(submit_multinode("srun", "-N3", f"--container={mn_image}", "hostname"))
    assert sorted(_lines(r.stdout)) == NODES


def test_srun_without_container_runs_on_the_nodes(submit_multinode):
    """The bare baseline: the same steps without --container (host files, node names)."""
    r = _ok(submit_multinode("srun", "-N3", "sh", "-c",
                             'echo "$(hostname) $SLURMD_NODENAME ${HPCCONT_SLURM_STEP:-unset}"'))
    assert sorted(_lines(r.stdout)) == [f"{n} {n} unset" for n in NODES]


def test_srun_one_container_per_node(submit_multinode, mn_image, slurm_multinode, test_user):
    """-N3 -n6: the two tasks of a node share one container (mount namespace, one squashfuse
    mount of /), and each node has its own."""
    probe = ('echo "$SLURMD_NODENAME $(hostname) $SLURM_PROCID $HPCCONT_SLURM_STEP '
             '$(readlink /proc/self/ns/mnt) $(stat -c %d:%i /) $(cat /etc/hostname)"')
    r = _ok(submit_multinode("srun", "-N3", "-n6", f"--container={mn_image}", "sh", "-c", probe))
    rows = [line.split() for line in _lines(r.stdout)]
    assert sorted(int(row[2]) for row in rows) == list(range(6)), rows
    assert {row[6] for row in rows} == {"container"}
    assert all(row[0] == row[1] for row in rows), "task ran on another node than Slurm says"
    assert len({row[3] for row in rows}) == 1, "one step"
    by_node = {}
    for row in rows:
        by_node.setdefault(row[0], set()).add((row[4], row[5]))
    assert sorted(by_node) == NODES
    assert all(len(ids) == 1 for ids in by_node.values()), f"several containers on a node: {by_node}"
    per_node = [ids.pop() for ids in by_node.values()]
    assert len({mnt for mnt, _ in per_node}) == 3, f"nodes share a container: {per_node}"
    assert len({root for _, root in per_node}) == 3, f"nodes share a mount of /: {per_node}"
    _nothing_left(slurm_multinode, test_user, mn_image)


def test_accounting_one_record_per_node(submit_multinode, mn_image, slurm_multinode):
    r = _ok(submit_multinode("srun", "-N3", "-n6", f"--container={mn_image}", "sh", "-c",
                             "echo $SLURM_JOB_ID"))
    job = _lines(r.stdout)[0]
    mine = helpers.accounting_records(slurm_multinode.accounting, lambda x: x["job"] == job,
                                      n=len(NODES))
    assert sorted(x["node"] for x in mine) == NODES, mine
    assert {(x["step"], x["image"], x["user"], x["kind"]) for x in mine} == \
        {("0", str(mn_image), "hpcuser", "squashfs")}, mine
    assert len({x["sha256"] for x in mine}) == 1
    # The step's first node alone writes the AdminComment (one RPC to slurmctld per step).
    assert helpers.admin_comment(slurm_multinode, job) == \
        f"hpccont:{mn_image}@sha256:{mine[0]['sha256']}"
    # The same step again: each node writes its entry from root's template of its first one
    # (launcher/account.c only reads the templates; Python's account rewrites them).
    templates = list(Path(f"{slurm_multinode.accounting}.templates").glob("account-*"))
    assert len(templates) >= len(NODES), templates
    before = {p: p.stat().st_ino for p in templates}
    r = _ok(submit_multinode("srun", "-N3", "-n6", f"--container={mn_image}", "sh", "-c",
                             "echo $SLURM_JOB_ID"))
    again = _lines(r.stdout)[0]
    second = helpers.accounting_records(slurm_multinode.accounting, lambda x: x["job"] == again,
                                        n=len(NODES))
    drop = ("job", "time")
    assert sorted(({k: v for k, v in x.items() if k not in drop} for x in second),
                  key=lambda x: x["node"]) == \
        sorted(({k: v for k, v in x.items() if k not in drop} for x in mine),
               key=lambda x: x["node"])
    assert {p: p.stat().st_ino for p in templates if p.exists()} == before, \
        "a node's second entry was written by Python again"
    assert helpers.admin_comment(slurm_multinode, again) == \
        f"hpccont:{mn_image}@sha256:{mine[0]['sha256']}"


# -- sbatch ----------------------------------------------------------------------------------------
def _sbatch_wait(submit, site_tmp, *opts, script=None):
    out = site_tmp / "job.out"
    argv = ["sbatch", "--wait", "-o", str(out), *opts]
    if script is not None:
        (site_tmp / "job.sh").write_text(script)
        argv.append(str(site_tmp / "job.sh"))
    r = submit(*argv)
    return r, out.read_text() if out.exists() else ""


def test_sbatch_two_nodes_inner_srun_steps(submit_multinode, mn_image, site_tmp, mn_plugstack):
    """sbatch -N2 --container: every srun of the job runs on both nodes in the image.  The
    batch script itself stays on the host (wrap_batch=no) so that it can run the host's srun."""
    mn_plugstack(wrap_batch="no")
    script = ("#!/bin/sh\n"
              "srun cat /etc/hostname\n"
              "srun hostname\n"
              "srun -n4 --overcommit sh -c 'echo \"task $SLURM_PROCID $(cat /etc/hostname)\"'\n"
              "srun --container=none cat /etc/hostname\n")
    r, out = _sbatch_wait(submit_multinode, site_tmp, "-N2", f"--container={mn_image}",
                          script=script)
    assert r.returncode == 0, r.stderr + out
    lines = _lines(out)
    host = Path("/etc/hostname").read_text().strip()
    assert lines[:2] == ["container"] * 2, out
    assert sorted(lines[2:4]) == NODES[:2], out
    assert sorted(lines[4:8]) == [f"task {i} container" for i in range(4)], out
    assert lines[8:] == [host] * 2, out


def test_sbatch_wrap_in_the_image_standard_layout(submit_multinode, mn_image, site_tmp):
    """The batch script runs in the container (wrap_batch=yes, the default) while slurmd keeps
    it where Debian's Slurm does: SlurmdSpoolDir/jobNNNNN/slurm_script, outside /tmp."""
    r, out = _sbatch_wait(submit_multinode, site_tmp, f"--container={mn_image}",
                          "--wrap", "cat /etc/os-release")
    assert r.returncode == 0 and out == OS_RELEASE, f"rc={r.returncode} {r.stderr}\n{out}"


def test_sbatch_script_in_the_image_on_two_nodes(submit_multinode, mn_image, site_tmp):
    """sbatch -N2 --container=IMG of a script file: the script runs in the image on the first
    node only."""
    r, out = _sbatch_wait(submit_multinode, site_tmp, "-N2", f"--container={mn_image}",
                          script="#!/bin/sh\necho \"$(hostname) $(cat /etc/hostname)\"\n")
    assert r.returncode == 0, r.stderr + out
    assert _lines(out) == ["node1 container"], out


# -- scancel ---------------------------------------------------------------------------------------
def test_scancel_multinode_step_leaves_nothing(submit_multinode, mn_image, slurm_multinode,
                                               site_tmp, test_user):
    script = ("#!/bin/sh\nsrun -N3 -n6 --container=%s sh -c "
              "'echo $$ > pid.$SLURMD_NODENAME.$SLURM_PROCID; exec sleep 300'\n" % mn_image)
    (site_tmp / "long.sh").write_text(script)
    r = _ok(submit_multinode("sbatch", "--parsable", "-N3", "-n6", "-o", f"{site_tmp}/long.out",
                             str(site_tmp / "long.sh")))
    job = r.stdout.strip().split(";")[0]
    try:
        started = _wait_for(lambda: len(list(site_tmp.glob("pid.*"))) == 6, 60)
        out = site_tmp / "long.out"
        assert started, f"the step never started: {out.read_text() if out.exists() else ''}"
        tasks = {}
        for f in site_tmp.glob("pid.*"):
            tasks[int(f.read_text())] = f.name.split(".")[1]
        # Each task really is where Slurm says, and each node has one FUSE server for the image.
        assert {pid: slurm_multinode.node_of(pid) for pid in tasks} == tasks
        fuse = _fuse_by_node(slurm_multinode, mn_image)
        assert sorted(fuse) == NODES and all(len(p) == 1 for p in fuse.values()), fuse
        listed = slurm_multinode.run(["scontrol", "listpids", f"{job}.0", "node2"]).stdout.split()
        assert {str(p) for p, n in tasks.items() if n == "node2"} <= set(listed), listed
    finally:
        _ok(submit_multinode("scancel", job))
    assert _wait_for(lambda: not any(_running(p) for p in tasks)), "a task survived scancel"
    _nothing_left(slurm_multinode, test_user, mn_image)
