"""--cpus/--memory through a delegated cgroup v2, on this machine's real kernel.

Why memory.max and cpu.max themselves are not tested for real here: this host is hybrid
(systemd's layout: cgroup v1 hierarchies under /sys/fs/cgroup/{cpu,memory,...}, the v2
hierarchy at /sys/fs/cgroup/unified).  A controller bound to a v1 hierarchy cannot be enabled
in v2, and the v1 memory and cpu hierarchies are in use (Slurm and the machine's own cgroups
live there), so no cgroup v2, delegated or not, can have memory.max or cpu.max.  The v2
hierarchy has one controller: hugetlb.  So:

- ``test_limits_join_a_delegated_cgroup`` makes real delegations the way systemd does (root
  chowns a cgroup directory and its cgroup.procs, cgroup.subtree_control and cgroup.threads
  to the test user) and runs, as the test user, the same ``plan_cgroup``/``join_cgroup`` that
  --memory and --cpus go through, with hugetlb's limit file in place of memory.max: the kernel
  then decides whether the move, the enabling and the write are allowed;
- ``test_memory_and_cpus_as_the_user_in_a_delegated_cgroup`` runs ``hpccont exec --memory 64M
  --cpus 0.5`` as the test user inside such a cgroup: one warning naming the reason (v1 holds
  the controllers), and the container runs;
- tests/compat/test_flags.py keeps the plan against a fake cgroup tree with memory and cpu.

On a unified (v2-only) host with a systemd user session, ``hpccont exec --memory 64M --cpus 0.5
IMG cat /sys/fs/cgroup/$(cut -d: -f3 /proc/self/cgroup)/memory.max`` shows 67108864."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpccont.runtime import limits

pytestmark = [pytest.mark.rootless, pytest.mark.root]
LIMIT = "hugetlb.2MB.max"          # the v2 controller this host has
VALUE = str(4 << 21)               # four 2 MiB pages

PROBE = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from hpccont.runtime import limits
spec, why = limits.plan_cgroup({%(limit)r: %(value)r})
out = {"why": why, "spec": spec}
if spec:
    limits.join_cgroup(spec)
    out["cgroup"] = open("/proc/self/cgroup").read().split("0::", 1)[1].strip()
    out["limit"] = open(os.path.join(spec["path"], %(limit)r)).read().strip()
    out["euid"] = os.geteuid()
print(json.dumps(out))
""" % {"limit": LIMIT, "value": VALUE}


class Delegation:
    """A cgroup under the v2 mount, made by root and handed to the test user."""

    def __init__(self, mount: Path, user):
        self.mount, self.user = mount, user
        self.top = mount / f"hpccont-test-{os.getpid()}"
        self.made = []

    def make(self, rel: str, delegate: bool = True, enable: bool = False) -> Path:
        d = self.top / rel if rel else self.top
        d.mkdir()
        self.made.append(d)
        if enable:
            (d / "cgroup.subtree_control").write_text("+hugetlb")
        if delegate:
            for p in (d, d / "cgroup.procs", d / "cgroup.subtree_control", d / "cgroup.threads"):
                os.chown(p, self.user.pw_uid, self.user.pw_gid)
        return d

    def run_in(self, cgroup: Path, argv, env=None):
        """argv as the test user, started inside ``cgroup`` (root moves the shell, then drops
        to the user with setpriv, which execs: no process of root's is left behind)."""
        env = dict(env or {}, HOME=self.user.pw_dir, USER=self.user.pw_name,
                   PATH="/usr/local/bin:/usr/bin:/bin", LANG="C.UTF-8")
        cmd = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && uid=$1 gid=$2 && shift 2 && '
               'exec setpriv --reuid="$uid" --regid="$gid" --init-groups "$@"',
               str(cgroup), str(self.user.pw_uid), str(self.user.pw_gid), *map(str, argv)]
        return subprocess.run(["env", "-i", *[f"{k}={v}" for k, v in env.items()], *cmd],
                              capture_output=True, text=True, timeout=120)

    def remove(self):
        """rmdir, deepest first; a launch's FUSE server may still be exiting in one (a cgroup
        with a process cannot go), so this waits for them, up to 30 s."""
        import time
        deadline = time.monotonic() + 30
        while self.top.exists() and time.monotonic() < deadline:
            for d in sorted(self.top.rglob("*"), key=lambda p: -len(p.parts)) + [self.top]:
                if d.is_dir():
                    try:
                        d.rmdir()
                    except OSError:
                        pass
            if self.top.exists():
                time.sleep(0.1)


@pytest.fixture
def delegation(test_user):
    mount = Path(limits.unified_mount())
    controllers = (mount / "cgroup.controllers").read_text().split() \
        if (mount / "cgroup.controllers").exists() else []
    if "hugetlb" not in controllers:
        pytest.skip(f"no cgroup v2 hierarchy with the hugetlb controller at {mount}")
    root_control = mount / "cgroup.subtree_control"
    before = root_control.read_text().split()
    if "hugetlb" not in before:
        root_control.write_text("+hugetlb")
    d = Delegation(mount, test_user)
    d.make("", delegate=False, enable=True)     # the test's own subtree, root's
    yield d
    d.remove()
    if "hugetlb" not in before:
        root_control.write_text("-hugetlb")


def probe(delegation, cgroup, install):
    r = delegation.run_in(cgroup, [sys.executable, "-c", PROBE, install["lib"]])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_limits_join_a_delegated_cgroup(delegation, install):
    top = delegation.top
    # systemd's layout: a delegated cgroup (user@UID.service) that enables the controllers for
    # its children, the user's processes in a leaf below it
    service = delegation.make("service", enable=True)
    leaf = delegation.make("service/leaf")
    out = probe(delegation, leaf, install)
    assert out["why"] is None and out["spec"]["enable"] == "", out
    assert out["cgroup"] == f"/{top.name}/service/hpccont-" + out["cgroup"].rsplit("-", 1)[1]
    assert out["limit"] == VALUE and out["euid"] == delegation.user.pw_uid
    # a delegated leaf of the user's own and nothing above it: the child is made below it,
    # the process moves in, then enables hugetlb for it (allowed: nobody else is left there)
    own = delegation.make("own")
    out = probe(delegation, own, install)
    assert out["why"] is None and out["spec"]["enable"] == str(own), out
    assert out["cgroup"].startswith(f"/{top.name}/own/hpccont-") and out["limit"] == VALUE
    # root's cgroup, not delegated: refused with the reason, nothing made
    mine = delegation.make("roots", delegate=False)
    out = probe(delegation, mine, install)
    assert out["spec"] is None and out["why"] == f"your cgroup /{top.name}/roots is not " \
                                                 "delegated to you"
    assert list(mine.iterdir()) and not [p for p in mine.iterdir() if p.is_dir()]


def test_a_later_launch_removes_the_cgroups_left_behind(delegation, install):
    service = delegation.make("service", enable=True)
    leaf = delegation.make("service/leaf")
    probe(delegation, leaf, install)
    first = [p.name for p in service.iterdir() if p.name.startswith("hpccont-")]
    assert len(first) == 1                      # the exited probe's cgroup, empty now
    probe(delegation, leaf, install)
    second = [p.name for p in service.iterdir() if p.name.startswith("hpccont-")]
    assert len(second) == 1 and second != first


def test_memory_and_cpus_as_the_user_in_a_delegated_cgroup(delegation, install, busybox_squashfs):
    service = delegation.make("service", enable=True)
    leaf = delegation.make("service/leaf")
    r = delegation.run_in(leaf, [install["hpccont"], "exec", "--memory", "64M", "--cpus", "0.5",
                                 busybox_squashfs, "cat", "/proc/self/cgroup"])
    assert r.returncode == 0, r.stderr
    assert f"0::/{delegation.top.name}/service/leaf" in r.stdout     # where it was started
    assert r.stderr.splitlines() == [
        "hpccont: warning: --cpus and --memory not applied: the cpu, memory controller is not "
        f"in this host's cgroup v2 hierarchy ({delegation.mount}; cgroup v1 holds it)"]
