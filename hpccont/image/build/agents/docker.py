"""``Bootstrap: docker``: an image from an OCI registry (``From``, ``Registry``, ``Namespace``).

``prefetch`` (run by the builder before any user namespace) resolves the reference and puts
its config and layers into the cache (image/registry); ``bootstrap`` then applies the cached
layers bottom first, with whiteouts, and returns the image config (Env, Entrypoint, Cmd,
WorkingDir, Labels), exactly as for docker-archive and OCI layouts.
"""
from ..layers import apply_layer
from ..oci import _decompressed, parse_config


def _reference(stage):
    from ...registry import reference
    return reference.parse(stage.header["from"], scheme="docker",
                           registry=stage.header.get("registry", ""),
                           namespace=stage.header.get("namespace", ""))


def _nohttps(stage, opts) -> bool:
    return bool(getattr(opts, "nohttps", False)) or \
        stage.header.get("nohttps", "").strip().lower() in ("true", "yes", "1")


def prefetch(stage, opts) -> None:
    from ...registry import pull
    stage.fetched = pull.fetch_image(_reference(stage), arch=getattr(opts, "arch", "") or None,
                                     nohttps=_nohttps(stage, opts),
                                     quiet=bool(getattr(opts, "quiet", False)))


def bootstrap(stage, rootfs, ctx):
    fetched = getattr(stage, "fetched", None)
    if fetched is None:
        prefetch(stage, getattr(ctx, "opts", None))
        fetched = stage.fetched
    label = fetched.ref.uri()
    log = ctx.progress.note if getattr(ctx, "verbose", False) else None
    for n, path in enumerate(fetched.layers, 1):
        if log:
            log(f"layer {n}/{len(fetched.layers)}")
        with _decompressed(open(path, "rb"), f"{label}: layer {n}") as layer:
            apply_layer(layer, rootfs, f"{label}: layer {n}")
    return parse_config(fetched.config, label)
