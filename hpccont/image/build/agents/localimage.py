"""``Bootstrap: localimage``: start from a SIF, a squashfs file or a sandbox directory."""
import os
import subprocess

from ....errors import BuildError
from ...source import open_image


def bootstrap(stage, rootfs, ctx):
    ref = stage.header["from"]
    if not os.path.isabs(ref) and ctx.base_dir and not os.path.exists(ref):
        ref = os.path.join(ctx.base_dir, ref)
    image = open_image(ref)
    if image.kind == "sandbox":
        argv = ["cp", "-a", "--", image.path + "/.", rootfs]
    else:
        if image.fs_type != "squashfs":
            raise BuildError(f"{ref}: localimage supports squashfs partitions only")
        argv = ["unsquashfs", "-f", "-n", "-d", rootfs]
        if image.offset:
            argv += ["-o", str(image.offset)]
        argv.append(image.path)
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise BuildError(f"localimage {ref}: unpacking failed: {' / '.join(tail)}")
    return None
