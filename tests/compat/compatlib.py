"""Helpers of the Apptainer compatibility tests (a module of their own: ``conftest`` names more
than one module in a full run, so tests never import from it)."""


def compat_env(compat_bin, extra=None):
    """The environment of a client that finds ``apptainer``/``singularity`` first on PATH."""
    env = {"PATH": f"{compat_bin}:/usr/local/bin:/usr/bin:/bin"}
    env.update(extra or {})
    return env
