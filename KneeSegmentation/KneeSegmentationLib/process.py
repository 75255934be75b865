"""Run the ``kneeseg`` command line out of process and read its JSON progress without blocking.

The child process writes one JSON object per stdout line (``{"stage", "fraction", "message", ...}``);
any other line (warnings, TensorFlow chatter, tracebacks on stderr) is kept as log text. Two reader
threads move lines into a queue; :meth:`ProcessRun.poll` drains that queue without waiting, so a
widget can call it from a ``QTimer`` and the GUI never blocks. :meth:`ProcessRun.wait` is the
blocking path for scripts and tests.

The child is started in its own process group (POSIX: new session; Windows: new process group) so
that :meth:`ProcessRun.cancel` can end the whole tree it spawned, not just the top process.

The line format and the exit codes are the core's (``kneeseg.contract``). This module imports
nothing from Slicer or Qt.
"""

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kneeseg.contract import parse_progress_line

MODULE_DIR = Path(__file__).resolve().parent.parent  # the KneeSegmentation/ module folder


def findPythonExecutable() -> str:
    """The Python that runs the core: ``PythonSlicer`` inside Slicer, else this interpreter.

    Inside Slicer, ``PythonSlicer`` is on ``PATH`` (and next to the Slicer executables); it runs
    Slicer's own Python with the packages installed in it. Outside Slicer (tests, scripts) the
    current interpreter is the right one.
    """
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    found = shutil.which("PythonSlicer")
    if found:
        return found
    beside = Path(sys.executable).with_name(name)
    if beside.is_file():
        return str(beside)
    return sys.executable


def coreEnvironment(moduleDir=None, base=None) -> dict:
    """Environment for the child: ``PYTHONPATH`` starts with the module folder (the shipped core)."""
    env = dict(os.environ if base is None else base)
    moduleDir = str(moduleDir or MODULE_DIR)
    parts = [moduleDir] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != moduleDir]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"  # progress lines arrive as they are written
    env.setdefault("PYTHONIOENCODING", "utf-8")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ banner out of the log
    return env


@dataclass
class Event:
    """One thing that happened in the child: ``kind`` is "progress", "log" or "exit"."""

    kind: str
    progress: dict = None
    text: str = ""
    stream: str = ""
    returncode: int = None


@dataclass
class ProcessRun:
    """A running (or finished) child process and the queue its reader threads fill."""

    command: list
    process: subprocess.Popen
    startTime: float = field(default_factory=time.monotonic)
    cancelRequested: bool = False
    returncode: int = None
    _queue: "queue.Queue" = field(default_factory=queue.Queue)
    _openStreams: int = 2
    _threads: list = field(default_factory=list)

    @classmethod
    def start(cls, command, env=None, cwd=None) -> "ProcessRun":
        kwargs = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True
        process = subprocess.Popen(
            [str(c) for c in command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **kwargs,
        )
        run = cls(command=[str(c) for c in command], process=process)
        for stream, name in ((process.stdout, "stdout"), (process.stderr, "stderr")):
            thread = threading.Thread(target=run._read, args=(stream, name), daemon=True, name=f"kneeseg-{name}")
            thread.start()
            run._threads.append(thread)
        return run

    def _read(self, stream, name):
        try:
            for line in iter(stream.readline, ""):
                line = line.rstrip("\r\n")
                progress = parse_progress_line(line) if name == "stdout" else None
                if progress is not None:
                    self._queue.put(Event("progress", progress=progress, text=line, stream=name))
                elif line.strip():
                    self._queue.put(Event("log", text=line, stream=name))
        except (OSError, ValueError):
            pass  # stream closed under us (process killed)
        finally:
            self._queue.put(Event("eof", stream=name))

    @property
    def running(self) -> bool:
        return self.returncode is None

    def poll(self, timeout: float = 0.0) -> list:
        """Events that arrived since the last call; waits at most ``timeout`` seconds for the first.

        The last event of a run is an ``exit`` event carrying the return code; after it, ``poll``
        returns an empty list.
        """
        events = []
        if self.returncode is not None:
            return events
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                remaining = deadline - time.monotonic()
                event = self._queue.get(timeout=remaining) if (remaining > 0 and not events) else self._queue.get_nowait()
            except queue.Empty:
                break
            if event.kind == "eof":
                self._openStreams -= 1
                continue
            events.append(event)
        if self._openStreams <= 0 and self.returncode is None:
            # Both pipes are closed: the process has ended (or closed them; wait briefly).
            try:
                rc = self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                return events
            self.returncode = rc
            events.append(Event("exit", returncode=rc))
        return events

    def wait(self, timeout: float = None, onEvent=None) -> int:
        """Block until the process ends (calling ``onEvent`` for each event); return its exit code.

        Raises ``TimeoutError`` (after cancelling the run) when ``timeout`` seconds pass first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                for event in self.poll(0.5):
                    if onEvent:
                        onEvent(event)
                raise TimeoutError(f"the process did not finish within {timeout:g} s and was stopped")
            for event in self.poll(0.1):
                if onEvent:
                    onEvent(event)
        return self.returncode

    def cancel(self, grace: float = 3.0) -> None:
        """Stop the whole process tree: a polite signal first, a kill after ``grace`` seconds."""
        self.cancelRequested = True
        if self.process.poll() is not None:
            return
        _signalTree(self.process, polite=True)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signalTree(self.process, polite=False)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if os.name != "nt":
            # The leader may be gone while children linger in the group: make sure they end too.
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, OSError):
                pass


def _signalTree(process, polite: bool) -> None:
    if os.name == "nt":
        if polite:
            try:
                process.send_signal(signal.CTRL_BREAK_EVENT)
                return
            except (OSError, ValueError):
                pass
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        return
    try:
        os.killpg(process.pid, signal.SIGTERM if polite else signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        try:
            process.kill()
        except OSError:
            pass
