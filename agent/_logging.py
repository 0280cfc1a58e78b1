"""Structured run logs: one JSON object per line in ``<run_dir>/events.jsonl``.

Every event has an ISO-8601 UTC ``timestamp``, a snake_case ``event`` name, the
``run_id`` bound with ``structlog.contextvars`` (trio child tasks inherit it) and its
own fields. Lines are flushed as they are written, so ``pgt logs --follow`` and
``tail -f | jq`` see them at once; a resumed run appends to the same file. This module
also reads the file back and renders events for a person.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog
import trio
from structlog.testing import LogCapture

__all__ = ["configure_logging", "follow_events", "get_logger", "read_events",
           "render_event"]

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


def configure_logging(run_dir: str | Path, run_id: str | None = None) -> Callable[[], None]:
    """Send structlog events to ``<run_dir>/events.jsonl``; return a closer.

    While ``structlog.testing.capture_logs()`` is active its capture stays in place,
    so tests see a run's events. The closer unbinds ``run_id``, restores the
    previous configuration and closes the file. Raises ``OSError`` when the file
    cannot be opened.
    """
    path = Path(run_dir) / EVENTS_FILE
    torn = _ends_torn(path)
    stream = path.open("a", encoding="utf-8")
    if torn:
        stream.write("\n")  # a killed run left half a line: keep ours whole
    before = structlog.get_config()
    capturing = any(isinstance(p, LogCapture) for p in before["processors"])
    structlog.configure(processors=before["processors"] if capturing else _PROCESSORS,
                        logger_factory=structlog.WriteLoggerFactory(file=stream),
                        cache_logger_on_first_use=False)
    tokens = structlog.contextvars.bind_contextvars(run_id=run_id or Path(run_dir).name)

    def close() -> None:
        structlog.contextvars.reset_contextvars(**tokens)
        structlog.configure(**before)
        stream.close()

    return close


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
    """Parse the complete lines of an events file; skip a torn last line."""
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if event := _parse(line):
                yield event


def render_event(event: dict[str, Any]) -> str:
    """One event as ``HH:MM:SS  name  key=value ...`` in local time."""
    fields = " ".join(f"{k}={_format(v)}" for k, v in event.items() if k not in _HIDDEN)
    return f"{_clock(event.get('timestamp'))}  {event.get('event', '?'):<16} {fields}".rstrip()


async def follow_events(path: str | Path, emit: Callable[[dict[str, Any]], None],
                        *, poll: float = 0.2) -> None:
    """Pass every event of a growing file to ``emit`` until the run stops.

    The run has stopped when the file ends with a ``run_stop`` event; one followed
    by more events (a resumed run) is history. Waits for the file to appear and
    holds back a line until its newline arrives. Cancel it (Ctrl-C) to stop earlier.
    """
    path = Path(path)
    while not path.exists():
        await trio.sleep(poll)
    with path.open(encoding="utf-8") as f:
        pending, last = "", None
        while True:
            pending += f.read()
            *lines, pending = pending.split("\n")
            for line in lines:
                if event := _parse(line):
                    emit(event)
                    last = event.get("event")
            if last == "run_stop" and not pending:
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
