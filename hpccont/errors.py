"""One exception hierarchy for hpccont.

Every error a user can cause (bad image, bad bind spec, missing command...) is raised as a
subclass of HpccontError.  The CLI catches HpccontError and prints ``hpccont: <message>`` on
one line with the class's exit status; nothing else ever reaches the user as a traceback.
"""


class HpccontError(Exception):
    """Base class.  ``exit_code`` is what the CLI exits with."""

    exit_code = 255

    def __init__(self, message: str, *, exit_code: "int | None" = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    def one_line(self) -> str:
        return " ".join(str(self).split("\n")).strip()


class UsageError(HpccontError):
    """Bad command line: unknown option, missing argument."""
    exit_code = 2


class ConfigError(HpccontError):
    """Site configuration is unreadable or invalid."""
    exit_code = 3


class ImageError(HpccontError):
    """Image is missing, unreadable, truncated, corrupt or of an unknown kind."""
    exit_code = 4


class SifError(ImageError):
    """A file is not valid SIF, or an object asked for does not exist."""


class SignatureError(ImageError):
    """Signature missing, invalid, or made by a key the policy does not trust."""


class BuildError(HpccontError):
    """Building an image failed (definition file, bootstrap, section script)."""
    exit_code = 5


class PolicyError(HpccontError):
    """The site configuration forbids what was asked (image dir, user binds...)."""
    exit_code = 6


class BindError(HpccontError):
    """A bind spec is malformed, its source is missing/unreadable, or its target escapes."""
    exit_code = 7


class PrivsepError(HpccontError):
    """Root-side code could not open a user-named path as that user (privsep.py)."""
    exit_code = 2


class LaunchError(HpccontError):
    """Setting up namespaces, mounts or identity failed."""
    exit_code = 255


class CommandNotFound(HpccontError):
    """The command to run does not exist in the container (shell convention: 127)."""
    exit_code = 127


class CommandNotExecutable(HpccontError):
    """The command exists but cannot be executed (shell convention: 126)."""
    exit_code = 126


class HostError(HpccontError):
    """Host adapter (nvidia, mpi) could not provide what was required."""
    exit_code = 8


class SchedulerError(HpccontError):
    """Slurm/PBS integration problem (job context, accounting, plugin install)."""
    exit_code = 9
