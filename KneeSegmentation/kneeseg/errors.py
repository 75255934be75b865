"""Error types shared by the whole package.

``InputError`` is the user's fault (a bad file, a bad option, a broken model bundle): the CLI reports
it on one line and exits with ``EXIT_BAD_INPUT``. ``OutputError`` (a full disk, a folder that cannot
be written) is reported the same way: the cause lies outside the program and the line says what to
fix. Anything else escaping the CLI is an internal error (``EXIT_INTERNAL``).
"""

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 130


def listed(names, shown: int = 3) -> str:
    """``names`` for a message: the first ``shown``, then how many more."""
    names = list(names)
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


class InputError(ValueError):
    """Bad input: the message names the problem and, where there is one, the file."""

    def __init__(self, message: str, path=None):
        self.path = None if path is None else str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class BundleError(InputError):
    """A model bundle that cannot be used (missing file, checksum mismatch, unknown format)."""


class OutputError(InputError):
    """An output that cannot be written (no space left, no permission): the run stops, nothing is left half-written."""


class MissingPackage(InputError):
    """A package this run needs is not installed; ``install`` is the one command that fixes it."""

    def __init__(self, package: str, install: str, message: str):
        self.package, self.install = package, install
        super().__init__(f"{message}: {install}")


class Cancelled(RuntimeError):
    """The run was cancelled by the caller (SIGINT/SIGTERM or a cancel callback)."""
