"""What a preprocessing job tells its user: one progress line per stage and domain, and Beam kept quiet.

Beam's own logging (pipeline construction, worker start-up, bundle progress, every worker's
warnings forwarded to the driver) is written for Beam's developers: a 4k-row job printed 80 lines
of it and a Taobao-scale job went minutes without a word of its own. A job therefore reports through
:class:`Progress` (rows read, dead letters, k-core passes, rows written, per stage and domain, with
the elapsed time), and, unless ``verbose``, :func:`quiet_beam` keeps Beam's output off the console
while a Beam run lasts: Beam's Python loggers are held at ``CRITICAL``, and the process's stderr
(file descriptor 2, which Beam's worker processes inherit and log to) goes to a log file, kept
only when the run fails, with the failure's traceback appended. Errors raised inside a Beam step
reach the user as one :class:`~.options.PreprocessingError` line (:func:`one_line_error`) that
names the file and that log; the full chain also stays on the exception (``__cause__``) for
``--verbose``.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from cdanet.preprocessing.options import PreprocessingError

#: Beam's Python loggers that :func:`quiet_beam` holds at CRITICAL.
BEAM_LOGGERS = ("apache_beam",)

# A PreprocessingError raised in a worker process reaches the driver as text inside a RuntimeError.
_REMOTE = re.compile(r"PreprocessingError: (.+?)(?: \[while running '[^']*'\])?(?:\\n|\n|\"|$)")
_WHILE_RUNNING = re.compile(r" \[while running '[^']*'\]$")


class Progress:
    """Timestamped progress lines (``[preprocess 0:00:12] movie: ...``) on ``stream`` (stderr by default)."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self._stream = stream
        self._enabled = enabled
        self._start = time.monotonic()

    def __call__(self, message: str) -> None:
        if not self._enabled:
            return
        stream = self._stream or sys.stderr
        print(f"[preprocess {_clock(time.monotonic() - self._start)}] {message}", file=stream, flush=True)

    @contextmanager
    def heartbeat(self, what: str, every: float = 60.0) -> Iterator[None]:
        """Say ``<what>: still running (h:mm:ss)`` every ``every`` seconds while the block runs (a long
        Beam run, e.g. a Taobao-scale ingest, is otherwise silent for minutes)."""
        if not self._enabled or every <= 0:
            yield
            return
        stop, start = threading.Event(), time.monotonic()

        def beat() -> None:
            while not stop.wait(every):
                self(f"{what}: still running ({_clock(time.monotonic() - start)})")

        thread = threading.Thread(target=beat, name="preprocess-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


@contextmanager
def beam_import_quietly() -> Iterator[None]:
    """Import Beam without its import-time notes about optional Google Cloud clients ("apitools not
    found", "No module named google.cloud.bigquery_storage_v1"): this job uses neither. Only records
    from Beam's own modules below ERROR are dropped, and only during the block."""
    root, beam_logger = logging.getLogger(), logging.getLogger("apache_beam")
    level = beam_logger.level
    noise = _BeamModuleNoise()
    root.addFilter(noise)  # "apitools not found" is logged on the root logger itself
    beam_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        beam_logger.setLevel(level)
        root.removeFilter(noise)


class _BeamModuleNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "apache_beam" not in record.pathname


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


@contextmanager
def quiet_beam(verbose: bool) -> Iterator[str | None]:
    """Keep Beam off the console for the block; yields the log file that gets its output (None if verbose).

    Beam's Python loggers are held at CRITICAL (a failure reaches the user as the exception), and
    file descriptor 2 points at the log file, so that Beam's worker processes, which inherit it,
    write there; ``sys.stderr`` keeps writing to the console (progress lines, the final error).
    Without a writable temporary folder only the loggers are quieted.
    """
    if verbose:
        yield None
        return
    loggers = [logging.getLogger(name) for name in BEAM_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with _stderr_to_file() as path:
            yield path
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextmanager
def _stderr_to_file() -> Iterator[str | None]:
    try:
        fd, path = tempfile.mkstemp(prefix="cdanet-beam-", suffix=".log")
    except OSError:
        yield None
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to keep Beam off
        os.close(fd)
        os.unlink(path)
        yield None
        return
    console = sys.stderr
    # Only a sys.stderr that writes to descriptor 2 needs a new stream to the console; one that does
    # not (a notebook's, a test's capture) keeps working as it is.
    swap = _writes_to_fd2(console)
    os.dup2(fd, 2)
    os.close(fd)
    if swap:
        sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")
    try:
        yield path
    finally:
        if swap:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = console
        os.dup2(saved, 2)
        os.close(saved)


def _writes_to_fd2(stream: TextIO) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        return False


def one_line_error(run: str, error: BaseException, log_path: str | None = None) -> PreprocessingError:
    """The one-line :class:`PreprocessingError` for a failed Beam run (the caller chains ``error``).

    A :class:`PreprocessingError` raised by a step (in process, or as text from a worker process)
    keeps its message, which names the file; anything else is reported with its type and first
    line, and the run it failed in.
    """
    where = f" (Beam's log: {log_path})" if log_path else ""
    for e in _chain(error):
        if isinstance(e, PreprocessingError):
            return PreprocessingError(_WHILE_RUNNING.sub("", str(e).splitlines()[0] if str(e) else "") + where)
    text = str(error)
    found = _REMOTE.findall(text)
    if found:
        return PreprocessingError(found[-1].replace("\\'", "'") + where)
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return PreprocessingError(f"the {run} run failed: {type(error).__name__}: {first[:300]}{where}; "
                              "--verbose shows Beam's log and the traceback")


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__
