"""Descriptors and /proc links of the runtime's processes, seen from inside the container.

A descriptor of a host directory in any process the container can reach is a way out:
``/proc/PID/fd/N/..`` walks the host's tree above the container's root.  Each launch here
lists the descriptors of the command against those the caller gave hpccont (the same set:
nothing of the runtime's is left open), then tries that walk through every descriptor of the
command and of the runtime's helpers (FUSE servers, the overlay lock holder, a --pid init),
looking for a marker file the container cannot otherwise see.  Before the fix, ``--overlay
DIR`` left the lock descriptor of DIR to the command and the host's /etc/hostname was read
through it.  The root side of the Slurm plugin is tests/slurm/test_security.py.
"""
import os
import subprocess

import pytest

import helpers

pytestmark = pytest.mark.rootless

# Inside: the command's own descriptors, then the walk through every descriptor of the runtime's
# processes (by command line), which must not find the marker.
INNER = r"""
for f in /proc/$$/fd/*; do printf '%s ' "${f##*/}"; done; echo
for p in /proc/[0-9]*; do
  case "$(tr '\0' ' ' < $p/cmdline 2>/dev/null)" in
    *hpccont*|*squashfuse*|*fuse-overlayfs*|*fuse2fs*|*hpc-*) ;;
    *) [ "$p" = "/proc/$$" ] || continue ;;
  esac
  for f in $p/fd/*; do
    [ -d "$f" ] && cat "$f/../../../../../../../../../..$MARKER" 2>/dev/null && echo "ESCAPED $f"
  done
done
echo probed
"""


@pytest.fixture(scope="module")
def marker():
    """A file under /run, which no container here binds."""
    path = f"/run/hpccont-security-marker-{os.getpid()}"
    with open(path, "w") as f:
        f.write("HOST-MARKER\n")
    os.chmod(path, 0o644)
    yield path
    os.unlink(path)


def _run(argv, as_user, marker, install):
    """INNER run by ``hpccont ARGV``, or (argv None) by the same busybox shell on the host,
    started alike: the descriptors any program gets from this caller (the shell's glob adds
    its own directory descriptor, in both)."""
    if argv is None:
        cmd = [helpers.BUSYBOX, "sh", "-c", INNER]
    else:
        cmd = [install["hpccont"], *map(str, argv), "sh", "-c", INNER]
    env = {"MARKER": marker}
    if as_user:
        return helpers.as_user(cmd, env=env)
    e = dict(os.environ, **env)
    e.pop("HPCCONT_CONFIG", None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=e)


def _same_descriptors(r, reference):
    assert r.returncode == 0 and reference.returncode == 0, r.stderr + reference.stderr
    assert r.stdout.splitlines()[-1] == "probed", r.stdout
    assert r.stdout.splitlines()[0] == reference.stdout.splitlines()[0], r.stdout


def _check(r, reference):
    _same_descriptors(r, reference)
    assert "HOST-MARKER" not in r.stdout and "ESCAPED" not in r.stdout, r.stdout


CASES = {
    "plain": [],
    "pid": ["--pid"],
    "overlay": ["--overlay", "{dir}"],
    "overlay-ro-contain": ["--contain", "--overlay", "{dir}:ro"],
    "overlay-fakeroot": ["--fakeroot", "--overlay", "{dir}"],
    "overlay-pid": ["--pid", "--overlay", "{dir}"],
    "writable-tmpfs": ["--writable-tmpfs"],
}


@pytest.mark.parametrize("case", CASES)
def test_no_descriptor_reaches_the_host_as_user(case, busybox_sif, user_dir, marker, install):
    opts = [o.format(dir=user_dir) for o in CASES[case]]
    _check(_run(["exec", *opts, busybox_sif], True, marker, install),
           _run(None, True, marker, install))


@pytest.mark.root
@pytest.mark.parametrize("case", ["plain", "pid", "overlay"])
def test_root_launch_leaks_no_descriptor(case, busybox_sif, shared_tmp, marker, install):
    """As root the container is root's, so no walk is a boundary there; what is checked is that
    the runtime leaves nothing of its own open (the loop device, the image, the staging area)
    but, with --overlay, the overlay's lock, which root's command holds (runtime/apply.py)."""
    opts = [o.format(dir=shared_tmp) for o in CASES[case]]
    r = _run(["exec", *opts, busybox_sif], False, marker, install)
    reference = _run(None, False, marker, install)
    if case != "overlay":
        _same_descriptors(r, reference)
        return
    assert r.returncode == 0, r.stderr
    extra = set(r.stdout.splitlines()[0].split()) - set(reference.stdout.splitlines()[0].split())
    assert len(extra) == 1, r.stdout
    r = subprocess.run([install["hpccont"], "exec", *opts, busybox_sif, "sh", "-c",
                        "for f in /proc/$$/fd/*; do readlink $f; done"],
                       capture_output=True, text=True)
    assert str(shared_tmp) in r.stdout.splitlines(), r.stdout + r.stderr


def test_joined_command_leaks_no_descriptor(busybox_sif, user_dir, marker, install,
                                            hpccont_user):
    """An instance's joined commands enter the keeper's namespaces: nothing of the keeper's or
    of the joining process is left open in them but, by design (runtime/join.py), the shared
    flock on the instance's ``.guests`` file, a regular 0600 file of the user's own state
    directory, read-only: no directory, nothing to walk from."""
    name = f"sec-fd-{os.getpid()}"
    r = hpccont_user("instance", "start", "--overlay", user_dir, busybox_sif, name)
    assert r.returncode == 0, r.stderr
    try:
        joined = _run(["exec", f"instance://{name}"], True, marker, install)
        reference = _run(None, True, marker, install)
        assert "HOST-MARKER" not in joined.stdout and "ESCAPED" not in joined.stdout
        extra = set(joined.stdout.split("\n")[0].split()) - set(reference.stdout.split())
        assert len(extra) <= 1, joined.stdout
        r = hpccont_user("exec", f"instance://{name}", "sh", "-c",
                         "for f in /proc/$$/fd/*; do [ -d $f ] && echo DIR $f; "
                         "readlink $f; done; true")
        targets = r.stdout.split()
        assert "DIR" not in targets, r.stdout
        assert len([t for t in targets if t.endswith(".guests")]) == len(extra), r.stdout
    finally:
        stop = hpccont_user("instance", "stop", name)
    assert stop.returncode == 0, stop.stderr


def test_pid_init_cannot_be_rewritten(hpccont_user, busybox_sif):
    """With --pid, PID 1 is the runtime's init (a host Python): /proc/1/exe is the host's
    interpreter.  The command may not open it, for writing or reading (CVE-2019-5736 against
    runc), nor read PID 1's descriptors."""
    r = hpccont_user("exec", "--pid", busybox_sif, "sh", "-c",
                     "echo x >> /proc/1/exe; cat /proc/1/exe > /dev/null; ls -l /proc/1/fd/; "
                     "readlink /proc/1/exe; readlink /proc/1/root; echo end")
    assert "end" in r.stdout, r.stderr
    assert r.stderr.count("Permission denied") >= 3, r.stderr
    assert "python" not in r.stdout, r.stdout
