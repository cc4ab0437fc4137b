"""Images from OCI registries: the distribution-spec client, auth, the blob/SIF cache, pull/push.

Nothing here is imported on the ``hpccont exec`` path; the CLI commands (pull, push, registry,
cache), the builder's ``docker``/``oras`` agents and the scheduler integrations import it when
they need it.  The entry point for schedulers is ``pull.pull_to_cache``.
"""


def pull_to_cache(ref: str, **kw) -> str:
    """``docker://``/``oras://`` reference -> path of the cached SIF (see pull.pull_to_cache)."""
    from .pull import pull_to_cache as real
    return real(ref, **kw)
