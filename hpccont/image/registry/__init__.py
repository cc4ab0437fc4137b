"""Images from OCI registries: the distribution-spec client, auth, the blob/SIF cache, pull/push.

Nothing here is imported on the ``hpccont exec`` path; the CLI commands (pull, push, registry,
cache), the builder's ``docker``/``oras`` agents and the scheduler integrations import it when
they need it.  The entry point for launches and schedulers is ``pull.pull_to_cache``.
"""

# Image references a registry serves: pulled into the cache, then run as SIFs.  Checked on the
# exec path, which must not import the client for a plain file.
SCHEMES = ("docker://", "oras://")


def is_reference(image: str) -> bool:
    return image.startswith(SCHEMES)


def pull_to_cache(ref: str, **kw) -> str:
    """``docker://``/``oras://`` reference -> path of the cached SIF (see pull.pull_to_cache)."""
    from .pull import pull_to_cache as real
    return real(ref, **kw)
