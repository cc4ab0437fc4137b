"""``Bootstrap: oras``: start from a SIF stored in an OCI registry (``From: REGISTRY/REPO:TAG``).

The SIF is fetched into the cache before the build (``prefetch``) and unpacked like a
``localimage``.
"""

from ....errors import BuildError, ImageError
from ... import squashfs
from ...source import open_image


def prefetch(stage, opts) -> None:
    from ...registry import oras, pull, reference
    ref = reference.parse(stage.header["from"], scheme="oras",
                          registry=stage.header.get("registry", ""),
                          namespace=stage.header.get("namespace", ""))
    nohttps = bool(getattr(opts, "nohttps", False)) or \
        stage.header.get("nohttps", "").strip().lower() in ("true", "yes", "1")
    cfg = pull.registry_config()
    pull.check_allowed(ref, cfg)
    stage.fetched = oras.pull_to_cache(ref, nohttps=nohttps,
                                       quiet=bool(getattr(opts, "quiet", False)),
                                       cache=pull.open_cache(cfg=cfg))


def bootstrap(stage, rootfs, ctx):
    path = getattr(stage, "fetched", None)
    if path is None:
        prefetch(stage, getattr(ctx, "opts", None))
        path = stage.fetched
    image = open_image(path)
    if image.fs_type != "squashfs":
        raise BuildError(f"oras://{stage.header['from']}: only squashfs SIF images can be "
                         "bootstrapped from")
    try:
        squashfs.extract(image.path, rootfs, offset=image.offset, into_existing=True)
    except ImageError as e:
        raise BuildError(f"oras://{stage.header['from']}: unpacking failed: {e}") from None
    return None
