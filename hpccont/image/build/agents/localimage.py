"""``Bootstrap: localimage``: start from a SIF, a squashfs file or a sandbox directory."""
import os
import subprocess

from ....errors import BuildError, ImageError
from ... import squashfs
from ...source import open_image


def bootstrap(stage, rootfs, ctx):
    ref = stage.header["from"]
    if not os.path.isabs(ref) and ctx.base_dir and not os.path.exists(ref):
        ref = os.path.join(ctx.base_dir, ref)
    image = open_image(ref)
    if image.kind == "sandbox":
        r = subprocess.run(["cp", "-a", "--", image.path + "/.", rootfs], capture_output=True,
                           text=True)
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            raise BuildError(f"localimage {ref}: copying failed: {' / '.join(tail)}")
        return None
    if image.fs_type != "squashfs":
        raise BuildError(f"{ref}: localimage supports squashfs partitions only")
    try:
        squashfs.extract(image.path, rootfs, offset=image.offset, into_existing=True)
    except ImageError as e:
        raise BuildError(f"localimage {ref}: unpacking failed: {e}") from None
    return None
