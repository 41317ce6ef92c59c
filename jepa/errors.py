"""The errors a user can cause (input, files, machine), importable without torch or the config schema.

Every one is a ``UserError``: the command-line tools print its message as one ``error:`` line and
exit 2 (``jepa.cli``), while any other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """An expected failure: bad input, a bad or missing file, a device this machine lacks."""

    hint = ""  # a second line saying what to do, where the message alone does not


class ConfigError(UserError, ValueError):
    """A config key is unknown, of the wrong type or out of range; the message names the key and what is valid."""


class FlagError(UserError, ValueError):
    """A command-line flag (or the argument it maps to) has a value that cannot work; the message names it and
    what is valid."""


class DeviceError(UserError, RuntimeError):
    """The configured device, kernels backend or attention backend is not available here."""


class NonFiniteError(UserError, RuntimeError):
    """The loss, the gradients or the optimizer state became NaN or infinite; the last good checkpoint is kept."""

    hint = "lower optim.lr, enable optim.grad_clip, or use training.precision fp32"


class OutputExistsError(UserError, FileExistsError):
    """An output path would replace an input, a training checkpoint, or (without --force) another file."""


class DiskFullError(UserError, OSError):
    """No space left on the device while writing a file; the previous version of the file is intact."""

    hint = "free some disk space (or write elsewhere) and run again"

    def __str__(self):
        return self.strerror
