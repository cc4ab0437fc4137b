"""Bootstrap agents: each fills an empty rootfs directory for one ``Bootstrap:`` keyword.

``AGENTS`` maps the keyword to the module that implements it; every module has
``bootstrap(stage, rootfs, ctx) -> ImageConfig | None`` (an image config only where the source
carries one: OCI/Docker images).
"""
import importlib

from ....errors import BuildError
from ..deffile import NETWORK_AGENTS, Stage
from ..srcref import registry_error

AGENTS = {
    "busybox": "busybox",
    "scratch": "scratch",
    "localimage": "localimage",
    "docker-archive": "ocitar",
    "oci-archive": "ocitar",
    "oci": "ocitar",
    "debootstrap": "debootstrap",
    "docker": "docker",
    "oras": "oras",
}
# Agents whose image comes from a registry: fetched before the build starts (prefetch).
REMOTE_AGENTS = ("docker", "oras")

# Registry agents -> the URI scheme the error message names.
NETWORK_SCHEMES = {"docker": "docker://", "docker-daemon": "docker://", "library": "library://",
                   "oras": "oras://", "shub": "shub://"}


def prefetch(definition, opts) -> None:
    """Fetch the registry images of every stage into the cache, in the calling process (before
    any user namespace): downloads, credentials and progress stay the user's own."""
    for stage in definition.stages:
        if stage.bootstrap in REMOTE_AGENTS and getattr(stage, "fetched", None) is None:
            module = importlib.import_module(f"{__name__}.{AGENTS[stage.bootstrap]}")
            module.prefetch(stage, opts)


def bootstrap(stage: Stage, rootfs: str, ctx):
    agent = stage.bootstrap
    if agent in NETWORK_AGENTS:
        scheme = NETWORK_SCHEMES.get(agent)
        if scheme:
            raise registry_error(scheme + stage.header.get("from", ""))
        raise BuildError(f"Bootstrap: {agent}: needs network package repositories, which "
                         "hpccont build does not use; offline alternatives: debootstrap from a "
                         "local mirror, docker-archive:, oci-archive:, localimage")
    if agent not in AGENTS:
        raise BuildError(f"unknown bootstrap agent {agent!r}")
    module = importlib.import_module(f"{__name__}.{AGENTS[agent]}")
    return module.bootstrap(stage, rootfs, ctx)
