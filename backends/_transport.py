"""Transports: trio byte streams over a serial port, a pty or TCP. Bytes only.

A serial port is opened and configured by pyserial (baud, raw mode); its file
descriptor is then read and written without blocking, and trio waits for it to
become readable or writable (``trio.lowlevel.wait_readable``): no thread per read,
cancellation and ``trio.fail_after`` at the call site work as for any trio stream.
A peer that goes away (a USB device unplugged, the far end of a pty closed)
raises ``trio.BrokenResourceError``; using a stream we closed raises
``trio.ClosedResourceError``. Framing lives in ``_wire``; nothing here parses bytes.
"""

from __future__ import annotations

import errno
import os
import termios
from collections.abc import Awaitable, Callable

import serial
import trio

__all__ = ["Connector", "FdStream", "open_serial", "serial_connector", "tcp_connector"]

# Opens a fresh link to the device each time it is called (the first connection and
# every reconnection); raises OSError when the device is not there.
Connector = Callable[[], Awaitable[trio.abc.Stream]]

_CHUNK = 65536


class FdStream(trio.abc.Stream):
    """A trio stream over a non-blocking file descriptor (tty, pty master or slave).

    ``on_close`` releases whatever owns the descriptor (the pyserial port), else the
    descriptor is closed directly. A read of 0 bytes or EIO means the peer is gone.
    """

    def __init__(self, fd: int, on_close: Callable[[], None] | None = None) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._on_close = on_close or (lambda: os.close(fd))
        self._closed = False
        self._send_lock = trio.StrictFIFOLock()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("link is closed")

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        self._check_open()
        waited = False
        while True:
            try:
                data = os.read(self._fd, max_bytes or _CHUNK)
            except BlockingIOError:
                data = None
            except OSError as exc:
                self._check_open()
                raise trio.BrokenResourceError(f"link read failed: {exc}") from exc
            # A tty may read b"" for "nothing yet"; b"" after readiness is a hangup.
            if data or (data is not None and waited):
                await trio.lowlevel.checkpoint()
                return data
            await trio.lowlevel.wait_readable(self._fd)
            self._check_open()
            waited = True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        async with self._send_lock:
            self._check_open()
            view = memoryview(data)
            while view:
                try:
                    sent = os.write(self._fd, view)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self._fd)
                    self._check_open()
                    continue
                except OSError as exc:
                    self._check_open()
                    raise trio.BrokenResourceError(f"link write failed: {exc}") from exc
                view = view[sent:]
            await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        self._check_open()
        await trio.lowlevel.wait_writable(self._fd)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self._fd)
            self._on_close()
        await trio.lowlevel.checkpoint()


def open_serial(path: str, baud: int) -> FdStream:
    """Open and configure a serial port (or pty) as a stream. Raises OSError.

    pyserial sets the line up (raw 8N1 at ``baud``, no flow control) and owns the
    descriptor; the stream only reads and writes it.
    """
    try:
        port = serial.Serial(path, baudrate=baud, timeout=0, write_timeout=0)
    except (serial.SerialException, ValueError) as exc:
        raise OSError(errno.ENODEV, f"cannot open serial port {path}: {exc}") from None
    fd = port.fileno()
    attrs = termios.tcgetattr(fd)
    attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 1, 0   # empty: EAGAIN, not b""
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    return FdStream(fd, on_close=port.close)


def serial_connector(path: str, baud: int) -> Connector:
    """A Connector that opens ``path`` afresh at every (re)connection."""

    async def connect() -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        return open_serial(path, baud)

    return connect


def tcp_connector(host: str, port: int) -> Connector:
    """A Connector that opens a TCP connection to ``host:port`` at every (re)connection."""

    async def connect() -> trio.abc.Stream:
        return await trio.open_tcp_stream(host, port)

    return connect
