"""The one error type the logic raises: a message meant for the user, and what kind of failure it is."""

INPUT = "input"  # the user's input is unusable (volume, bundle, training data, options)
INTERNAL = "internal"  # the process or the logic failed; the log has the details
CANCELLED = "cancelled"  # the user (or a timeout) stopped the run
DEPENDENCY = "dependency"  # a Python package the core needs is missing


class KneeSegmentationError(RuntimeError):
    """A failure with a readable, one-paragraph ``message`` for the panel and a ``kind``.

    ``log`` holds the full text the process wrote (may be empty).
    """

    def __init__(self, message: str, kind: str = INTERNAL, log: str = ""):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.log = log
