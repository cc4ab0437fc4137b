"""``Bootstrap: busybox``: a minimal image from the host's static busybox (Debian busybox-static).

Apptainer downloads busybox from ``MirrorURL``; builds here must work offline, so the host's
binary is used.  It must be static: nothing else (no libc) is copied into the image.
"""
import os
import shutil
import subprocess

from .... import elf
from ....errors import BuildError

DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "home", "tmp", "var/tmp", "proc",
        "sys", "dev")
ETC_FILES = {"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n", "etc/group": "root:x:0:\n",
             "etc/hosts": "127.0.0.1 localhost\n"}
ELF_INTERP = b"PT_INTERP"


def host_busybox() -> str:
    path = os.environ.get("HPCCONT_BUSYBOX") or shutil.which("busybox") or "/bin/busybox"
    if not os.path.isfile(path):
        raise BuildError("Bootstrap: busybox needs the host's static busybox "
                         "(Debian package busybox-static)")
    return path


def bootstrap(stage, rootfs, ctx):
    src = host_busybox()
    if not elf.is_static(src):
        raise BuildError(f"Bootstrap: busybox: {src} is not a static binary "
                         "(install busybox-static)")
    for d in DIRS:
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    os.chmod(os.path.join(rootfs, "tmp"), 0o1777)
    os.chmod(os.path.join(rootfs, "var/tmp"), 0o1777)
    shutil.copyfile(src, os.path.join(rootfs, "bin/busybox"))
    os.chmod(os.path.join(rootfs, "bin/busybox"), 0o755)
    applets = subprocess.run([src, "--list"], capture_output=True, text=True, check=True).stdout
    for name in sorted(set(applets.split())):
        link = os.path.join(rootfs, "bin", name)
        if name != "busybox" and not os.path.lexists(link):
            os.symlink("busybox", link)
    for rel, text in ETC_FILES.items():
        with open(os.path.join(rootfs, rel), "w") as f:
            f.write(text)
    return None
