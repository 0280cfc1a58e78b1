"""Structured run logs: one JSON object per line in ``<run_dir>/events.jsonl``.

Every event has an ISO-8601 UTC ``timestamp``, a snake_case ``event`` name, the
``run_id`` bound with ``structlog.contextvars`` (trio child tasks inherit it) and its
own fields. Lines are flushed as they are written, so ``pgt logs --follow`` and
``tail -f | jq`` see them at once; a resumed run appends to the same file. This module
also reads the file back and renders events for a person.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog
import trio
from structlog.testing import LogCapture

__all__ = ["RunLog", "configure_logging", "dedupe", "follow_events", "get_logger",
           "next_session", "read_events", "render_event"]

EVENTS_FILE = "events.jsonl"
_HIDDEN = ("timestamp", "event", "run_id", "level")


def _plain_values(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Turn NumPy scalars and paths into JSON numbers and strings (not reprs)."""
    for key, value in event.items():
        if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
            event[key] = value.item()
        elif isinstance(value, Path):
            event[key] = str(value)
    return event


_PROCESSORS = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    _plain_values,
    structlog.processors.JSONRenderer(),
]


class _Sink:
    """Where a run's JSON lines go: held in memory until the run directory is there
    (devices open before it is created), then its events.jsonl, flushed per line."""

    def __init__(self) -> None:
        self.pending: list[str] = []
        self.stream: Any = None

    def write(self, text: str) -> None:
        if self.stream is None:
            self.pending.append(text)
        else:
            self.stream.write(text)

    def flush(self) -> None:
        if self.stream is not None:
            self.stream.flush()

    def attach(self, path: Path) -> None:
        torn = _ends_torn(path)
        self.stream = path.open("a", encoding="utf-8")
        if torn:
            self.stream.write("\n")  # a killed run left half a line: keep ours whole
        for text in self.pending:
            self.stream.write(text)
        self.pending.clear()
        self.stream.flush()


class _Router:
    """The one file structlog writes to while any run is on: each line goes to the
    sink of the run whose context logged it (a contextvar: trio tasks and worker
    threads inherit it), so runs in several threads of one process keep their own
    events. A line logged outside every run is dropped: library code never prints."""

    def write(self, text: str) -> None:
        sink = _CURRENT.get()
        if sink is not None:
            sink.write(text)

    def flush(self) -> None:
        sink = _CURRENT.get()
        if sink is not None:
            sink.flush()


_CURRENT: contextvars.ContextVar[_Sink | None] = contextvars.ContextVar("pgt_run_sink",
                                                                        default=None)
_ROUTER = _Router()
_CONFIG_LOCK = threading.Lock()
_users = 0
_saved: dict[str, Any] = {}


class RunLog:
    """The event log of one run, from before its devices open to its end.

    ``attach(run_dir)`` sends what was logged so far, and everything after, to
    ``<run_dir>/events.jsonl``; ``close()`` ends it (and, when it was the last run
    of the process, restores structlog's previous configuration). Every event
    carries ``run_id`` and ``session`` (1 for the first session of a run, one more
    per resume), so a step a resume runs again can be told apart.
    """

    def __init__(self, run_id: str, session: int = 1) -> None:
        global _users, _saved
        self.sink = _Sink()
        with _CONFIG_LOCK:
            if _users == 0:
                _saved = structlog.get_config()
                capturing = any(isinstance(p, LogCapture) for p in _saved["processors"])
                # While structlog.testing.capture_logs() is active its capture stays.
                structlog.configure(processors=_saved["processors"] if capturing else _PROCESSORS,
                                    logger_factory=structlog.WriteLoggerFactory(file=_ROUTER),
                                    cache_logger_on_first_use=False)
            _users += 1
        self.sink_token = _CURRENT.set(self.sink)
        self.tokens = structlog.contextvars.bind_contextvars(run_id=run_id, session=session)

    def attach(self, run_dir: str | Path) -> None:
        self.sink.attach(Path(run_dir) / EVENTS_FILE)

    def close(self) -> None:
        global _users
        structlog.contextvars.reset_contextvars(**self.tokens)
        _CURRENT.reset(self.sink_token)
        with _CONFIG_LOCK:
            _users -= 1
            if _users == 0:
                structlog.configure(**_saved)
        if self.sink.stream is not None:
            self.sink.stream.close()


def configure_logging(run_dir: str | Path, run_id: str | None = None) -> Callable[[], None]:
    """Send structlog events to ``<run_dir>/events.jsonl`` at once; return a closer.

    Raises ``OSError`` when the file cannot be opened.
    """
    path = Path(run_dir) / EVENTS_FILE
    log = RunLog(run_id or Path(run_dir).name, session=next_session(path))
    try:
        log.attach(run_dir)
    except BaseException:
        log.close()
        raise
    return log.close


def next_session(path: Path) -> int:
    """1 + the sessions (run_start events) an events file holds."""
    if not Path(path).is_file():
        return 1
    return 1 + sum(1 for e in read_events(path) if e.get("event") == "run_start")


def _ends_torn(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            f.seek(-1, 2)
            return f.read(1) != b"\n"
    except (FileNotFoundError, OSError):  # absent, or empty (cannot seek before 0)
        return False


def get_logger() -> Any:
    """The agent's structlog logger (emit ``log.info("event_name", field=...)``)."""
    return structlog.get_logger("pgt")


def read_events(path: str | Path) -> Iterator[dict[str, Any]]:
    """Parse the complete lines of an events file; skip torn and garbled lines
    (a crash's half line, bytes that are not UTF-8)."""
    with Path(path).open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if event := _parse(line):
                yield event


def dedupe(events) -> list[dict[str, Any]]:
    """The events with each step once: a ``run_resumed`` at step S supersedes the
    step, eval and checkpoint events of steps after S logged before it (a stopped
    session's work the resume runs again)."""
    out: list[dict[str, Any]] = []
    for event in events:
        if event.get("event") == "run_resumed" and isinstance(event.get("step"), int):
            resumed = event["step"]
            out = [e for e in out if e.get("event") not in _PER_STEP
                   or not isinstance(e.get("step"), int) or e["step"] <= resumed]
        out.append(event)
    return out


_PER_STEP = ("step", "eval", "checkpoint_saved")


def render_event(event: dict[str, Any]) -> str:
    """One event as ``HH:MM:SS  name  key=value ...`` in local time."""
    fields = " ".join(f"{k}={_format(v)}" for k, v in event.items() if k not in _HIDDEN)
    return f"{_clock(event.get('timestamp'))}  {event.get('event', '?'):<16} {fields}".rstrip()


async def follow_events(path: str | Path, emit: Callable[[dict[str, Any]], None],
                        *, poll: float = 0.2, alive: Callable[[], bool] | None = None,
                        grace: float = 2.0) -> None:
    """Pass every event of a growing file to ``emit`` until the run stops.

    ``alive()`` says whether a process still works on the run (pgt._lock.held_by):
    following ends once the file has no more lines and no process has held the run
    for ``grace`` seconds — after its ``run_stop``, or after a kill that logged
    none; a resume that picks the run up meanwhile is followed on. Without
    ``alive``, following ends at a ``run_stop`` that is the file's last event. Waits
    for the file to appear and holds back a line until its newline arrives. Cancel
    it (Ctrl-C) to stop earlier.
    """
    path = Path(path)
    while not path.exists():
        if alive is not None and not alive():
            await trio.sleep(grace)
            if not path.exists() and not alive():
                return
        await trio.sleep(poll)
    with path.open(encoding="utf-8", errors="replace") as f:
        pending, last, idle_since = "", None, None
        while True:
            chunk = f.read()
            pending += chunk
            *lines, pending = pending.split("\n")
            for line in lines:
                if event := _parse(line):
                    emit(event)
                    last = event.get("event")
            if not chunk:
                if alive is None:
                    if last == "run_stop" and not pending:
                        return
                elif alive():
                    idle_since = None
                else:
                    idle_since = idle_since or trio.current_time()
                    if trio.current_time() - idle_since >= grace:
                        return
            await trio.sleep(poll)


def _parse(line: str) -> dict[str, Any] | None:
    if not line.endswith("\n") and not line.strip().endswith("}"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None  # a line torn by a crash
    return event if isinstance(event, dict) else None


def _clock(stamp: Any) -> str:
    try:
        moment = datetime.datetime.fromisoformat(str(stamp))
    except ValueError:
        return "--:--:--"
    return moment.astimezone().strftime("%H:%M:%S")


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str) and (" " in value or not value):
        return json.dumps(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)
