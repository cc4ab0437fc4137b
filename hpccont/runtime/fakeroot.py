"""``--fakeroot`` at run time: uid 0 inside, through the user namespace only.

The container's (outer) user namespace gets the builder's id map (image/build/fakeroot.py):
the caller is root, and the caller's /etc/subuid and /etc/subgid ranges are ids 1..N when
newuidmap/newgidmap exist (apt, dpkg and friends chown to system users), or only the caller,
mapped to 0.  The nested namespace that maps the caller back is left out, so the command runs
as root of that namespace.  Apptainer's limits hold: root inside has no privilege outside; a
file a subordinate uid writes belongs to that uid on the host.

The map is written from outside the namespace: newuidmap is set-user-id, and a helper in the new
namespace would run it without privilege.  A helper forked before the unshare writes it.
"""
from __future__ import annotations

import os

from ..errors import LaunchError
from . import kernel


def plan_fakeroot(req, env: dict, overrides: dict, warnings: list) -> None:
    """What --fakeroot changes in a plan besides the id map: the user's name inside."""
    for d in (env, overrides):
        d["USER"] = d["LOGNAME"] = "root"


def unshare_mapped(flags: int) -> None:
    """unshare(``flags``, which include CLONE_NEWUSER) with the fakeroot id map written."""
    from ..image.build.fakeroot import _write_maps, host_plan
    from ..errors import HpccontError
    ids = host_plan()
    me = os.getpid()
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    helper = os.fork()
    if helper == 0:
        os.close(go_w)
        os.close(done_r)
        answer = b"1"
        if os.read(go_r, 1) == b"1":
            try:
                _write_maps(me, ids)
            except (OSError, HpccontError) as e:
                answer = b"0" + str(e).encode()
        os.write(done_w, answer)
        os._exit(0)
    os.close(go_r)
    os.close(done_w)
    try:
        kernel.unshare(flags)
    except OSError:
        os.write(go_w, b"0")
        os.waitpid(helper, 0)
        raise
    os.write(go_w, b"1")
    os.close(go_w)
    answer = os.read(done_r, 4096)
    os.close(done_r)
    os.waitpid(helper, 0)
    if answer != b"1":
        raise LaunchError(f"--fakeroot: cannot map the user namespace's ids: "
                          f"{answer[1:].decode(errors='replace') or 'helper failed'}")
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    if ids.use_helpers:
        os.setgroups([])
