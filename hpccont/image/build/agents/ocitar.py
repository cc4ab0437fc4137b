"""``Bootstrap: docker-archive`` / ``oci-archive`` / ``oci``: images saved to files, no registry."""
import os

from ..oci import unpack


def bootstrap(stage, rootfs, ctx):
    ref = stage.header["from"]
    if not os.path.isabs(ref) and ctx.base_dir and not os.path.exists(ref):
        ref = os.path.join(ctx.base_dir, ref)
    return unpack(stage.bootstrap, ref, rootfs, log=ctx.progress.note if ctx.verbose else None)
