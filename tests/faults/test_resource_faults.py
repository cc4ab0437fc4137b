"""A full --writable-tmpfs, and the image file truncated under a running container.

The writable layer is a tmpfs of ``runtime.tmp_size``: filling it gives the command ENOSPC and
nothing else; the container goes on and leaves nothing behind.  An image truncated while it is
mounted (squashfuse rootless, a loop device as root) gives the command I/O errors for what was
not read yet, never a hang; everything still goes when the command ends, and the image, once
rewritten, launches again.  As the test user and as root.
"""
import os
import shutil
import time

import pytest

from faultlib import make_who
from faultlib import Launch, wait_clean

pytestmark = [pytest.mark.timeout(300)]

FILL = ("dd if=/dev/zero of=/fill bs=64k count=256 2>&1 | tail -1; "      # 16 MiB into 4 MiB
        "echo more > /small || echo small-failed; rm -f /fill; echo again > /small && "
        "cat /small")


@pytest.mark.parametrize("user", ["user", "root"])
def test_writable_tmpfs_full(install, private_image, fault_dir, request, user):
    pw = request.getfixturevalue("test_user") if user == "user" else None
    who = make_who(pw, fault_dir, f"full-{user}", "  tmp_size: 4m\n")
    launch = Launch(install["hpccont"], private_image, ["sh", "-c", FILL], user=pw,
                    options=("--writable-tmpfs",), env=who.env)
    launch.running_command("sh")
    rc, out, err = launch.finish()
    since = time.monotonic()
    assert rc == 0, err
    assert "No space left on device" in out + err, out + err
    assert out.endswith("again\n"), out        # room again once the file is gone
    took, left = wait_clean(str(private_image), launch.ns, since)
    assert took is not None, left
    said = [line for line in (out + err).splitlines() if "No space" in line]
    print(f"\n--writable-tmpfs full ({user}): {said[0]}; the command went on")


# Reads what the launch did not read yet: a tree walk and a file's content (busybox's own pages
# are in use, so cached).
AFTER = ("sleep 0.3; ls -lR /usr /lib /etc /sbin /.singularity.d >/dev/null 2>/tmp/ls.err; "
         "echo ls=$?; wc -c < /.singularity.d/labels.json >/dev/null 2>&1; echo cat=$?; "
         "echo done")


@pytest.mark.parametrize("user", ["user", "root"])
def test_image_truncated_while_running(install, private_image, fault_dir, request, user):
    pw = request.getfixturevalue("test_user") if user == "user" else None
    who = make_who(pw, fault_dir, f"trunc-{user}")
    saved = fault_dir / f"saved-{user}.sif"
    shutil.copy(private_image, saved)
    launch = Launch(install["hpccont"], private_image, ["sh", "-c", AFTER], user=pw,
                    env=who.env)
    launch.running_command("sh")
    os.truncate(private_image, 4096)            # the SIF header stays, the squashfs goes
    since = time.monotonic()
    rc, out, err = launch.finish(timeout=60)    # no hang
    assert "Traceback" not in err
    assert out.endswith("done\n"), (rc, out, err)
    took, left = wait_clean(str(private_image), launch.ns, since)
    assert took is not None, left
    shutil.copy(saved, private_image)           # rewritten: launches again
    rc2, out2, err2 = Launch(install["hpccont"], private_image, ["cat", "/etc/hostname"],
                             user=pw, env=who.env).finish()
    assert (rc2, out2) == (0, "container\n"), err2
    print(f"\nimage truncated under a running container ({user}): "
          f"{' '.join(out.split())}; gone {took * 1000:.0f} ms after the command")
