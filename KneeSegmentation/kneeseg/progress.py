"""Progress reporting for people (a bar on stderr) and programs (JSON lines on stdout).

JSON mode writes one object per line: ``{"stage", "fraction", "message", ...}``; the final line of a
successful run has stage ``"done"`` and a ``"result"``; a failure has stage ``"error"`` and
``"error": "input" | "internal" | "cancelled"``. The Slicer panel follows these lines.

Core functions take any callable ``progress(stage, fraction, message, **extra)``; where a caller gives
none they report to :data:`NO_PROGRESS`, which discards everything.
"""

import json
import sys
import time


class Progress:
    MODES = ("bar", "json", "none")

    def __init__(self, mode="bar", stdout=None, stderr=None):
        if mode not in self.MODES:
            raise ValueError(f"unknown progress mode {mode!r}")
        self.mode = mode
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self._last_bar = 0.0
        self.fraction = 0.0

    def __call__(self, stage, fraction, message="", **extra):
        self.fraction = max(0.0, min(1.0, float(fraction)))
        if self.mode == "json":
            self._json({"stage": stage, "fraction": round(self.fraction, 4), "message": message, **extra})
        elif self.mode == "bar":
            self._bar(stage, message)

    def done(self, message, result):
        self.fraction = 1.0
        if self.mode == "json":
            self._json({"stage": "done", "fraction": 1.0, "message": message, "result": result})
        elif self.mode == "bar":
            self._bar("done", message, force=True)
            self.stderr.write("\n")

    def error(self, message, kind, **extra):
        if self.mode == "json":
            self._json({"stage": "error", "fraction": round(self.fraction, 4), "message": message, "error": kind,
                        **extra})
        elif self.mode == "bar":
            self.stderr.write("\n")

    def log(self, message):
        """A human-readable line (stderr in every mode, so JSON stdout stays clean)."""
        if self.mode != "none":
            self.stderr.write(message + "\n")
            self.stderr.flush()

    def _json(self, obj):
        self.stdout.write(json.dumps(obj, default=_json_default) + "\n")
        self.stdout.flush()

    def _bar(self, stage, message, force=False):
        now = time.monotonic()
        if not force and now - self._last_bar < 0.1:
            return
        self._last_bar = now
        width = 30
        filled = int(round(self.fraction * width))
        text = f"\r[{'#' * filled}{'.' * (width - filled)}] {self.fraction * 100:5.1f}% {stage}: {message}"
        self.stderr.write(text[:120].ljust(120))
        self.stderr.flush()


class NullProgress:
    """Reports nothing: stands in where a caller asks for no progress reports."""

    mode = "none"

    def __call__(self, stage, fraction, message="", **extra):
        pass

    def done(self, message, result):
        pass

    def error(self, message, kind):
        pass

    def log(self, message):
        pass


NO_PROGRESS = NullProgress()


def _json_default(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
