"""kill -9 of the runtime at each phase of a launch, and of its FUSE server, as the test user
(rootless: squashfuse) and as root (a loop device and a kernel squashfs mount).

Each launch is stopped at its phase by apply.py's --debug hook (HPCCONT_DEBUG_STOP_AT): the kill
lands exactly there.  Afterwards nothing may remain: no mount naming the image on the host, no
process or descriptor holding the container's mount namespace, no process holding the image
(FUSE server, page-cache reader), no loop device backed by it, no new file in the user's state
or cache directory; and the next launch works.  The time the kernel took to let everything go
is printed (pytest -s): docs/security.md quotes it.
"""
import pytest

from faultlib import Launch, leftovers, make_who, new_files, snapshot, wait_clean, wait_for

pytestmark = [pytest.mark.rootless, pytest.mark.root, pytest.mark.timeout(300)]

# Phase -> the step the launch is stopped before (apply.py's Step names); None: the command
# runs (sh in place of the runtime).
PHASES = {
    "after unshare": "making / private",
    "after mount": "mounting the overlay",      # image mounted, FUSE server and reader started
    "after pivot": "mapping back",              # in the container root, host tree detached
    "during the command": None,
}
# A request in flight when the server dies is aborted (ECONNABORTED); later ones find no
# connection (ENOTCONN).
FUSE_GONE = ("Transport endpoint is not connected", "Software caused connection abort")
# Each round also asks for a new name the image lacks: a name never looked up reaches the
# server (what it has once served, the image server's caching adapter lets the kernel answer
# alone, and the overlay keeps its own negative entries).
LOOP = ("i=0; while cat /etc/hostname >/dev/null; do i=$((i+1)); ls /etc/absent-$i 2>&1 | "
        "grep connected >&2 && break; sleep 0.05; done; echo image-gone; exit 7")


def _start(install, image, who, phase):
    at = PHASES[phase]
    argv = ["sh", "-c", LOOP] if at is None else ["cat", "/etc/hostname"]
    launch = Launch(install["hpccont"], image, argv, user=who.pw, stop_at=at, env=who.env)
    if at is None:
        launch.running_command("sh")
    return launch


def _next_launch_works(install, image, who):
    rc, out, err = Launch(install["hpccont"], image, ["cat", "/etc/hostname"], user=who.pw,
                          env=who.env).finish()
    assert (rc, out) == (0, "container\n"), err


def _messages(err):
    """What the user sees on stderr, without the --debug trace and plan."""
    return [line for line in err.splitlines()
            if line.startswith("hpccont") and not line.startswith("hpccont: [")]


def _assert_clean(image, launch, since, who, before):
    took, left = wait_clean(str(image), launch.ns, since)
    assert took is not None, f"left after 10 s: {left}"
    assert not new_files(before), new_files(before)
    return took


@pytest.mark.parametrize("phase", list(PHASES))
def test_runtime_killed(install, private_image, who, phase):
    _next_launch_works(install, private_image, who)       # caches written once, before
    before = snapshot(who.dirs)
    launch = _start(install, private_image, who, phase)
    assert launch.ns and leftovers(str(private_image), launch.ns)   # the container was there
    since = launch.kill()
    rc, _, err = launch.finish()
    assert rc == -9, err
    took = _assert_clean(private_image, launch, since, who, before)
    print(f"\nruntime killed {phase} ({who.name}): everything gone after {took * 1000:.1f} ms")
    _next_launch_works(install, private_image, who)


@pytest.mark.parametrize("phase", ["after mount", "after pivot", "during the command"])
def test_fuse_server_killed(install, private_image, test_user, fault_dir, phase):
    who = faultlib_who(test_user, fault_dir)
    _next_launch_works(install, private_image, who)
    before = snapshot(who.dirs)
    launch = _start(install, private_image, who, phase)
    since = launch.kill(launch.fuse_server())
    if PHASES[phase]:
        launch.cont()
    rc, out, err = launch.finish()
    messages = _messages(err)
    assert "Traceback" not in err
    if phase == "during the command":      # the command sees the error and goes on
        assert (rc, out) == (7, "image-gone\n"), err
        assert "Transport endpoint is not connected" in err
    else:                                  # one line saying why the launch failed
        assert rc != 0 and len(messages) == 1, err
        assert any(why in messages[0] for why in FUSE_GONE), err
    took = _assert_clean(private_image, launch, since, who, before)
    print(f"\nFUSE server killed {phase}: rc {rc}, {messages or err.splitlines()[-1:]}, "
          f"everything gone after {took * 1000:.1f} ms")
    _next_launch_works(install, private_image, who)


def faultlib_who(pw, fault_dir):
    return make_who(pw, fault_dir, "fuse")


# Between two kernel steps, where no Step hook is: strace delivers SIGKILL as the launch enters
# the system call (which then never runs).  Root: the loop device is attached (autoclear) but
# not mounted yet.  Rootless: the FUSE mount is made but its server not forked yet.
BETWEEN = {
    "root": ("mount", 3, "squashfs"),          # / private, staging tmpfs, then the image
    "user": ("clone,clone3", 1, "clone"),      # the FUSE server's fork
}


@pytest.mark.parametrize("mode", list(BETWEEN))
def test_killed_between_kernel_steps(install, private_image, who_for_mode, mode):
    import shutil
    import subprocess
    import time
    if not shutil.which("strace"):
        pytest.skip("strace is not installed")
    who = who_for_mode(mode)
    calls, when, expect = BETWEEN[mode]
    log = who.home / "strace.log"
    argv = ["strace", "-o", str(log), "-e", f"trace=mount,{calls}",
            "-e", f"inject={calls}:signal=SIGKILL:when={when}",
            str(install["hpccont"]), "exec", str(private_image), "true"]
    env = {"PATH": "/usr/bin:/bin", **who.env}
    ids = dict(user=who.pw.pw_uid, group=who.pw.pw_gid, extra_groups=[]) if who.pw else {}
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, **ids)
    since = time.monotonic()
    last = [line for line in log.read_text().splitlines() if not line.startswith("+++")][-1]
    assert expect in last and last.endswith("= ?"), last      # killed entering that call
    took, left = wait_clean(str(private_image), None, since)
    assert took is not None, left
    _next_launch_works(install, private_image, who)
    print(f"\nkilled entering {expect} ({who.name}): rc {r.returncode}, nothing left "
          f"after {took * 1000:.1f} ms")


@pytest.mark.parametrize("pid_ns", [False, True], ids=["no --pid", "--pid"])
def test_runtime_killed_with_children_running(install, private_image, who, pid_ns):
    """The command's own children are not the runtime: killed alone, the top process leaves
    them running, and with them the container (its mount namespace, and as root the loop
    device), until they end, as for any process tree.  With --pid the command's children are
    in a PID namespace whose PID 1 dies with the killed process (PR_SET_PDEATHSIG), and the
    kernel kills the rest at once: a sleep of 30 s is gone within the 10 s wait_clean allows."""
    _next_launch_works(install, private_image, who)
    child = "sleep 30" if pid_ns else "sleep 2"
    launch = Launch(install["hpccont"], private_image, ["sh", "-c", f"{child} & wait"],
                    user=who.pw, options=("--pid",) if pid_ns else (), env=who.env)
    launch.ns = wait_for(lambda: _ns_of_command(launch), what="the command's child")
    since = launch.kill()
    launch.proc.wait()        # not its output: an orphan holds the pipes while it runs
    if not pid_ns:        # the orphan holds the container while it runs
        assert any(c == "sleep" for _, c, _ in leftovers(str(private_image), launch.ns)
                   .get("namespace", [])), leftovers(str(private_image), launch.ns)
    took, left = wait_clean(str(private_image), launch.ns, since, seconds=10)
    assert took is not None, left
    launch.finish()
    print(f"\nruntime killed with a child running, {'--pid' if pid_ns else 'no --pid'} "
          f"({who.name}): everything gone after {took * 1000:.0f} ms")
    _next_launch_works(install, private_image, who)


def _ns_of_command(launch):
    """The mount namespace of the running command (under --pid, a grandchild of the launch)."""
    from faultlib import children, comm, mnt_ns
    todo = [launch.pid]
    while todo:
        pid = todo.pop()
        if comm(pid) == "sleep":
            return mnt_ns(pid)
        todo += children(pid)
    return None
