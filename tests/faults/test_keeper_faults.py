"""kill -9 of the keeper of a shared container (rootless, runtime/share.py) and of a joined one
(root, ``--join``), while a guest runs.

Rootless, the FUSE server dies with its keeper (PR_SET_PDEATHSIG): the guest sees the image go
(ENOTCONN) and its container goes when it ends.  As root the kernel squashfs mount lives as
long as the guest's namespace: the guest keeps running, and the loop device frees itself when
it ends.  Either way the dead keeper's state files stay (nothing runs in a process killed with
-9); the next keeper to start removes them (join.sweep_dead), and once that one has left the
state directory is empty again.
"""
import os
import shutil
import time
from pathlib import Path

import pytest

from faultlib import make_who
from faultlib import (Launch, comm, image_holders, kill_holders, tree, wait_clean, wait_for)

pytestmark = [pytest.mark.timeout(300)]

# Each round also asks for a new name the image lacks: a name never looked up reaches the
# server (what it has once served, the image server's caching adapter lets the kernel answer
# alone, and the overlay keeps its own negative entries).
LOOP = ("i=0; while cat /etc/hostname >/dev/null; do i=$((i+1)); ls /etc/absent-$i 2>&1 | "
        "grep connected >&2 && break; sleep 0.05; done; echo image-gone; exit 7")


def _parent(pid):
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _state_dir(who):
    run = Path(who.env["XDG_RUNTIME_DIR"])
    return run / (f"hpccont-{who.pw.pw_uid}" if who.pw else "state")


def _wait_state_empty(d, seconds=20):
    wait_for(lambda: not [n for n in tree(d) if n.startswith(("join-", "fast-"))],
             seconds, f"the state directory {d} to empty: {sorted(tree(d))}")


@pytest.mark.rootless
def test_shared_keeper_killed(install, private_image, test_user, fault_dir):
    who = make_who(test_user, fault_dir, "share", "  share: always\n  share_idle_s: 1\n")
    guest = Launch(install["hpccont"], private_image, ["sh", "-c", LOOP], user=test_user,
                   env=who.env)
    guest.running_command("sh")
    fuse = [p for p, c in image_holders(str(private_image)) if c.startswith("squashfuse")]
    assert len(fuse) == 1
    keeper = _parent(fuse[0])
    state = _state_dir(who)
    dead = {n for n in tree(state) if n.startswith("join-")}
    assert dead, tree(state)
    since = guest.kill(keeper)
    rc, out, err = guest.finish()
    assert (rc, out) == (7, "image-gone\n"), err
    took, left = wait_clean(str(private_image), guest.ns, since)
    assert took is not None, left
    assert dead <= tree(state)          # the kernel cannot remove files: the next keeper does
    other = private_image.with_name("other-" + private_image.name)
    shutil.copy(private_image, other)   # another container: a keeper of another name
    for image in (other, private_image):
        rc, out, err = Launch(install["hpccont"], image, ["cat", "/etc/hostname"],
                              user=test_user, env=who.env).finish()
        assert (rc, out) == (0, "container\n"), err
        if image == other:
            assert not dead & tree(state), tree(state)     # swept as the new keeper started
    _wait_state_empty(state)
    kill_holders(str(other))
    took2, left = wait_clean(str(private_image), None, time.monotonic())
    assert took2 is not None, left
    print(f"\nshared keeper killed: guest saw the image go, everything gone after "
          f"{took * 1000:.1f} ms; state swept by the next keeper")


@pytest.mark.root
def test_joined_keeper_killed_as_root(install, private_image, fault_dir):
    if os.geteuid() != 0:
        pytest.skip("root mode")
    who = make_who(None, fault_dir, "join")
    guest = Launch(install["hpccont"], private_image,
                   ["sh", "-c", "i=0; while [ $i -lt 100 ] && cat /etc/hostname >/dev/null; "
                    "do i=$((i+1)); sleep 0.02; done; echo ran $i"],
                   options=("--join", "faults"), env=who.env)
    guest.running_command("sh")
    members = [int(p) for p in os.listdir("/proc") if p.isdigit() and _ns(p) == guest.ns]
    keeper = [p for p in members if p != guest.pid and comm(p) == "hpccont"]
    assert len(keeper) == 1, members
    since = guest.kill(keeper[0])
    rc, out, err = guest.finish()
    assert (rc, out) == (0, "ran 100\n"), err      # the kernel mount outlives the keeper
    took, left = wait_clean(str(private_image), guest.ns, since)
    assert took is not None, left
    rc, out, err = Launch(install["hpccont"], private_image, ["cat", "/etc/hostname"],
                          options=("--join", "faults"), env=who.env).finish()
    assert (rc, out) == (0, "container\n"), err
    _wait_state_empty(_state_dir(who))
    took2, left = wait_clean(str(private_image), None, time.monotonic())
    assert took2 is not None, left


def _ns(pid):
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None
