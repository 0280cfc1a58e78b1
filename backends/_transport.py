"""Transports: trio byte streams over a serial port, a pty, TCP or RFC 2217. Bytes only.

A serial port is opened and configured by pyserial (baud, raw mode); its file
descriptor is then read and written without blocking, and trio waits for it to
become readable or writable (``trio.lowlevel.wait_readable``): no thread per read,
cancellation and ``trio.fail_after`` at the call site work as for any trio stream.
A peer that goes away (a USB device unplugged, the far end of a pty closed)
raises ``trio.BrokenResourceError``; using a stream we closed raises
``trio.ClosedResourceError``. Framing lives in ``_wire``; nothing here parses bytes.

A serial port served over the network by ser2net or any RFC 2217 server
(``rfc2217://host:port``) is reached through pyserial's own RFC 2217 client, which
blocks and runs a reader thread of its own: ``Rfc2217Stream`` opens, reads and writes
it in worker threads (``trio.to_thread``), a read waiting at most ``_POLL_S`` at a
time, so cancellation and deadlines work there too and a cancelled read loses no bytes.
"""

from __future__ import annotations

import errno
import os
import termios
import threading
from collections.abc import Awaitable, Callable

import serial
import serial.rfc2217
import trio

__all__ = ["Connector", "FdStream", "Rfc2217Stream", "open_rfc2217", "open_serial",
           "rfc2217_connector", "serial_connector", "tcp_connector"]

# Opens a fresh link to the device each time it is called (the first connection and
# every reconnection); raises OSError when the device is not there.
Connector = Callable[[], Awaitable[trio.abc.Stream]]

_CHUNK = 65536
_POLL_S = 0.05   # longest wait of one RFC 2217 read (how long a cancelled read lingers)


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
    wait_for_one_byte(port.fileno())
    return FdStream(port.fileno(), on_close=port.close)


def wait_for_one_byte(fd: int) -> None:
    """VMIN 1, VTIME 0 on a tty: a non-blocking read of nothing raises EAGAIN, not b""."""
    attrs = termios.tcgetattr(fd)
    attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


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


class _Rfc2217Port(serial.rfc2217.Serial):
    """pyserial's RFC 2217 client. Its ``close`` (run also when opening fails) skips
    closing the socket when the peer has reset the connection (pyserial 3.5); here it
    is closed in any case. Opening calls ``Thread.setDaemon`` and ``setName``, whose
    DeprecationWarnings must not be errors (the tests filter them)."""

    def close(self) -> None:
        sock = self._socket
        super().close()
        if sock is not None:
            sock.close()


class Rfc2217Stream(trio.abc.Stream):
    """A trio stream over an opened pyserial RFC 2217 port. Use ``open_rfc2217``.

    Reads run in worker threads, one at a time (``_read_lock``), each waiting at most
    ``_POLL_S``; what a read abandoned by cancellation still gets is kept in
    ``_received`` for the next ``receive_some``. pyserial reports a connection that
    went away as SerialException (its reader thread died): BrokenResourceError here.
    """

    def __init__(self, port: serial.SerialBase) -> None:
        self._port = port
        self._closed = False
        self._send_lock = trio.StrictFIFOLock()
        self._read_lock = threading.Lock()       # one thread reads the port at a time
        self._received_lock = threading.Lock()   # guards _received
        self._received = bytearray()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("link is closed")

    def _read(self, max_bytes: int) -> None:
        """In a worker thread: wait up to _POLL_S for bytes, keep what came."""
        with self._read_lock:
            data = self._port.read(1)
            if data:
                data += self._port.read(min(self._port.in_waiting, max_bytes - 1))
            with self._received_lock:
                self._received += data

    def _take(self, max_bytes: int) -> bytes:
        with self._received_lock:
            data = bytes(self._received[:max_bytes])
            del self._received[:max_bytes]
        return data

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        self._check_open()
        max_bytes = max_bytes or _CHUNK
        while not (data := self._take(max_bytes)):
            try:
                await trio.to_thread.run_sync(self._read, max_bytes, abandon_on_cancel=True)
            except serial.SerialException as exc:
                self._check_open()
                raise trio.BrokenResourceError(f"link read failed: {exc}") from exc
            self._check_open()
        await trio.lowlevel.checkpoint()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        async with self._send_lock:
            self._check_open()
            try:
                await trio.to_thread.run_sync(self._port.write, bytes(data), abandon_on_cancel=True)
            except serial.SerialException as exc:
                self._check_open()
                raise trio.BrokenResourceError(f"link write failed: {exc}") from exc

    async def wait_send_all_might_not_block(self) -> None:
        self._check_open()
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            with trio.CancelScope(shield=True):   # closing joins pyserial's reader thread
                await trio.to_thread.run_sync(self._port.close)
        await trio.lowlevel.checkpoint()


async def open_rfc2217(host: str, port: int, baud: int) -> Rfc2217Stream:
    """Open the serial port an RFC 2217 server serves at ``host:port``. Raises OSError.

    pyserial's client connects, negotiates Telnet and RFC 2217, and asks the server
    for raw 8N1 at ``baud`` without flow control. If the caller is cancelled meanwhile,
    a port that opens anyway is closed in its thread.
    """
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lock, state = threading.Lock(), {"abandoned": False, "port": None}

    def opened() -> serial.SerialBase | None:
        try:
            port = _Rfc2217Port(f"rfc2217://{where}", baudrate=baud, timeout=_POLL_S)
        except (serial.SerialException, ValueError) as exc:
            cause = exc.__context__
            if isinstance(cause, OSError):   # nothing listening, no such host, ...
                raise OSError(f"cannot connect to the RFC 2217 server {where}: {cause}") from None
            raise OSError(f"RFC 2217 server {where}: {exc}") from None
        with lock:
            if not state["abandoned"]:
                state["port"] = port
                return port
        port.close()   # the caller gave up while we were opening
        return None

    try:
        return Rfc2217Stream(await trio.to_thread.run_sync(opened, abandon_on_cancel=True))
    except trio.Cancelled:
        with lock:
            state["abandoned"] = True
            late = state["port"]   # opened just as the caller gave up
        if late is not None:
            threading.Thread(target=late.close, daemon=True).start()
        raise


def rfc2217_connector(host: str, port: int, baud: int) -> Connector:
    """A Connector that opens the RFC 2217 port at ``host:port`` at every (re)connection."""

    async def connect() -> trio.abc.Stream:
        return await open_rfc2217(host, port, baud)

    return connect
