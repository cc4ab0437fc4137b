"""``Bootstrap: debootstrap``: a Debian/Ubuntu base from a mirror (OSVersion, MirrorURL, Include).

``%{OSVERSION}`` in MirrorURL is replaced by OSVersion, as in Apptainer.  Without MirrorURL the
mirror comes from ``$HPCCONT_DEBIAN_MIRROR`` or Debian's redirector.  debootstrap runs as
(fake) root, so a non-root build runs it inside the build's user namespace.
"""
import os
import shutil
import subprocess

from ....errors import BuildError

DEFAULT_MIRROR = "http://deb.debian.org/debian"


def command(stage, rootfs: str, environ=os.environ) -> list:
    suite = stage.header["osversion"]
    mirror = stage.header.get("mirrorurl") or environ.get("HPCCONT_DEBIAN_MIRROR") or DEFAULT_MIRROR
    mirror = mirror.replace("%{OSVERSION}", suite)
    argv = ["debootstrap", "--variant=minbase"]
    if stage.includes():
        argv.append("--include=" + ",".join(stage.includes()))
    return argv + [suite, rootfs, mirror]


def bootstrap(stage, rootfs, ctx):
    if shutil.which("debootstrap") is None:
        raise BuildError("Bootstrap: debootstrap needs the 'debootstrap' command "
                         "(Debian package debootstrap)")
    argv = command(stage, rootfs)
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stdout + r.stderr).strip().splitlines()[-4:]
        raise BuildError(f"debootstrap failed (exit {r.returncode}): {' / '.join(tail)}",
                         exit_code=5)
    # apt's downloaded packages are build-host state, not part of the image.
    for d in ("var/cache/apt/archives",):
        path = os.path.join(rootfs, d)
        for name in os.listdir(path) if os.path.isdir(path) else ():
            if name.endswith(".deb"):
                os.unlink(os.path.join(path, name))
    return None
