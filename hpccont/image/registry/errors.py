"""The one error class of registry work: a bad reference, auth, network, TLS, digest, disk."""
from ...errors import ImageError


class RegistryError(ImageError):
    """Pulling or pushing failed; the message is one line naming the reference and the cause."""
