"""One writer per run directory: an OS-level lock held for as long as a process works
on the run.

``<run_dir>/.lock`` holds the holder's pid and host; the lock itself is ``flock`` on
that file, which the operating system releases when the process ends however it
ends, so a lock left by a dead process is free and simply taken over (the file's old
contents say whose it was). A second process on a live run is refused in one line
naming the holder. ``pgt logs --follow`` asks ``held_by`` whether a run's process is
still alive.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

__all__ = ["LOCK_FILE", "RunLock", "held_by"]

LOCK_FILE = ".lock"


class RunLock:
    """``with RunLock(run_dir, error) as lock:``; ``lock.previous`` is the name a holder
    that died without releasing left ("pid host"), or "" (a clean release empties the
    file). Raises ``error(message)`` when the run is held."""

    def __init__(self, run_dir: Path, error: type[Exception]) -> None:
        self.run_dir, self.error = Path(run_dir), error
        self.fd: int | None = None
        self.previous = ""
        self.created = False    # whether this process made the lock file
        self.started = False    # whether the work it guards began (see release)

    def __enter__(self) -> RunLock:
        path = self.run_dir / LOCK_FILE
        self.created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        for attempt in range(3):   # held_by's brief shared lock must not refuse us
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt < 2:
                    time.sleep(0.02)
                    continue
                holder = _read(fd) or "another process"
                os.close(fd)
                raise self.error(f"run directory {self.run_dir} is in use by "
                                 f"{_describe(holder)}; one process at a time trains a "
                                 f"run") from None
        self.previous = _read(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None and self.created and not self.started:
            # Refused before it began (a bad checkpoint, bad data): leave the run as it was.
            (self.run_dir / LOCK_FILE).unlink(missing_ok=True)
        if self.fd is not None:
            os.ftruncate(self.fd, 0)   # a clean release: a holder's name left means it died
            os.close(self.fd)   # releases the lock; the file stays (removing it would race)
            self.fd = None


def _read(fd: int) -> str:
    return os.pread(fd, 256, 0).decode("utf-8", "replace").strip()


def _describe(holder: str) -> str:
    pid, _, host = holder.partition(" ")
    return f"pid {pid} on {host}" if host else holder


def held_by(run_dir: Path) -> str | None:
    """Who holds the run's lock now ("pid host"), or None when no process does."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read(fd) or "another process"
    finally:
        os.close(fd)
    return None
