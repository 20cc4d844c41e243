"""The console a person reads: egoray's own lines on the terminal, everything else in a log file.

Ray, Ray Data, Ray Train and the libraries write to the process's stdout and stderr — Python
writes and C++ writes, from the driver and, echoed, from every worker. :func:`quiet` points file
descriptors 1 and 2 at a log file and keeps the terminal for :func:`say` (egoray's messages, the
summary, errors), for :func:`progress` (one line per stage, rewritten in place on a terminal) and
for the lines egoray's jobs tag with their name (``[train_vlm] epoch 3/10 ...``), shown once even
when Ray echoes them twice. ``--verbose`` skips all of it: everything goes where it always did.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# what Ray puts before a worker's echoed line: "(RayTrainWorker pid=123, ip=10.0.0.1) "
WORKER_PREFIX = re.compile(r"^\([^()]*pid=\d+[^()]*\)\s*")
TAG = re.compile(r"^\[(?P<tag>[A-Za-z_][\w ]*?)\] ")
PIPE_PROGRESS_EVERY_S = 30.0  # in a pipe (CI, a log) a progress line at most this often per stage


class _Console:
    """Where egoray's lines go; the terminal's streams while :func:`quiet` holds."""

    def __init__(self) -> None:
        self.out: TextIO | None = None
        self.err: TextIO | None = None
        self.tags: frozenset[str] = frozenset()
        self.show_progress = True
        self.last_line = ""
        self.live = ""  # the progress line now on the terminal (tty only)
        self.progress_at: dict[str, float] = {}
        self.progress_text: dict[str, str] = {}

    @property
    def quiet(self) -> bool:
        return self.out is not None

    def stream(self, error: bool = False) -> TextIO:
        if self.out is None:
            return sys.stderr if error else sys.stdout
        return self.err if error else self.out  # type: ignore[return-value]

    def tty(self) -> bool:
        return bool(getattr(self.stream(), "isatty", lambda: False)())

    def write(self, line: str, error: bool = False) -> None:
        stream = self.stream(error)
        if self.live and self.tty():
            stream.write("\r\x1b[2K")
            self.live = ""
        stream.write(line + "\n")
        stream.flush()
        self.last_line = line


CONSOLE = _Console()


def say(*parts: object, error: bool = False) -> None:
    """A line for the person at the terminal (also in the log when quiet)."""
    line = " ".join(str(p) for p in parts)
    if CONSOLE.quiet:
        _log_copy(line)
    CONSOLE.write(line, error)


def progress(stage: str, text: str, final: bool = False) -> None:
    """One live progress line per stage: rewritten in place on a terminal; in a pipe (and in the
    log) printed when it changed and at most every ``PIPE_PROGRESS_EVERY_S``, and when ``final``."""
    line = f"  {stage}: {text}"
    now = time.monotonic()
    due = final or now - CONSOLE.progress_at.get(stage, -1e9) >= PIPE_PROGRESS_EVERY_S
    record = due and CONSOLE.progress_text.get(stage) != text
    if record:
        CONSOLE.progress_at[stage], CONSOLE.progress_text[stage] = now, text
        if CONSOLE.quiet:
            _log_copy(line)
    if not CONSOLE.show_progress:
        return
    if CONSOLE.tty() and not final:
        stream = CONSOLE.stream()
        stream.write("\r\x1b[2K" + line[:200])
        stream.flush()
        CONSOLE.live = line
    elif record:
        CONSOLE.write(line)


def _log_copy(line: str) -> None:
    with contextlib.suppress(Exception):
        sys.stdout.write(line + "\n")  # the log, while quiet
        sys.stdout.flush()


class _Router(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` while quiet: every line into the log; lines tagged with one of
    egoray's names also onto the terminal, once (Ray may echo a worker's line twice)."""

    def __init__(self, log: TextIO) -> None:
        self.log = log
        self.pending = ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        self.log.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            shown = terminal_text(line, CONSOLE.tags)
            if shown is not None and shown != CONSOLE.last_line:
                CONSOLE.write(shown)
        return len(text)

    def flush(self) -> None:
        self.log.flush()


def terminal_text(line: str, tags: Iterable[str]) -> str | None:
    """The line as the terminal shows it, when it is one of egoray's (tagged ``[name] ``), else None."""
    text = WORKER_PREFIX.sub("", ANSI.sub("", line).strip()).strip()
    match = TAG.match(text)
    return text if match and match["tag"] in tags else None


@contextlib.contextmanager
def quiet(log_path: Path, tags: Iterable[str] = (), show_progress: bool = True) -> Iterator[Path]:
    """Send the process's output to ``log_path`` for the duration; the terminal gets egoray's lines
    (and the stages' progress lines unless ``show_progress`` is off: the demo's one line per job)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    out, err = _terminal(sys.stdout, saved[0]), _terminal(sys.stderr, saved[1])
    log = open(log_path, "a", buffering=1, errors="replace")
    streams = sys.stdout, sys.stderr
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    router = _Router(log)
    sys.stdout = sys.stderr = router  # type: ignore[assignment]
    CONSOLE.out, CONSOLE.err, CONSOLE.tags, CONSOLE.show_progress = out, err, frozenset(tags), show_progress
    try:
        yield log_path
    finally:
        with contextlib.suppress(Exception):
            router.flush()
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        if CONSOLE.live:
            out.write("\n")
        CONSOLE.out = CONSOLE.err = None
        CONSOLE.tags, CONSOLE.live, CONSOLE.show_progress = frozenset(), "", True
        CONSOLE.progress_at.clear()
        CONSOLE.progress_text.clear()
        for stream, opened in ((out, out is not streams[0]), (err, err is not streams[1])):
            if opened:
                stream.close()
        log.close()


def _terminal(stream: TextIO, saved_fd: int) -> TextIO:
    """Where the person's lines go while the descriptors point at the log: a stream on the saved
    descriptor when ``stream`` writes to fd 1 or 2, else ``stream`` itself (a redirect in Python,
    a test's capture)."""
    try:
        on_fd = stream.fileno() in (1, 2)
    except (AttributeError, OSError, ValueError):
        on_fd = False
    return os.fdopen(os.dup(saved_fd), "w", buffering=1) if on_fd else stream


def log_file(output: str, name: str) -> Path:
    """Where a run's log goes: ``OUTPUT/_logs/`` for a local output, else ``EGORAY_LOG_DIR``
    (default ``./egoray-logs/``)."""
    from egoray.storage import is_remote  # not at import: the CLI imports this module to start

    stamp = time.strftime("%Y%m%d-%H%M%S")
    if is_remote(output):
        return Path(os.environ.get("EGORAY_LOG_DIR", "egoray-logs")) / f"{name}-{stamp}.log"
    return Path(output.removeprefix("file://")) / LOG_DIR / f"{name}-{stamp}.log"


LOG_DIR = "_logs"  # "_": skipped where an output is checked for being empty; --overwrite keeps it
