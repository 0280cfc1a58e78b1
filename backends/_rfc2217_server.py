"""An RFC 2217 server: a serial port of this host, reached elsewhere as rfc2217://HOST:PORT.

For a ring whose host has no ser2net, and for the tests (in front of the emulator's
pty). pyserial's ``serial.rfc2217.PortManager`` speaks the protocol (the Telnet
negotiation, the port settings a client asks for, escaping); this module only moves
bytes. It serves one TCP client at a time (one that arrives meanwhile waits in the
listen backlog), opens the serial port afresh for each, as ser2net does, and pumps
bytes both ways until either side goes away. A port that cannot be opened (the
device is unplugged) closes the connection at once: the client finds no device and
retries. Run it as ``python -m pgt.backends._rfc2217_server /dev/ttyACM0 --port 3333``.
"""

from __future__ import annotations

import argparse
import errno
from collections.abc import Awaitable, Callable

import serial
import structlog
import trio
from serial.rfc2217 import PortManager

from pgt.backends._transport import FdStream, wait_for_one_byte

__all__ = ["serve_rfc2217"]

_LINK_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_NO_LINES = (errno.EINVAL, errno.ENOTTY)   # what a port without modem lines answers


def _lenient_line(name: str) -> property:
    read = getattr(serial.Serial, name).fget

    def line(self) -> bool:
        try:
            return read(self)
        except OSError as exc:
            if exc.errno not in _NO_LINES:
                raise
            return False

    return property(line)


class _Port(serial.Serial):
    """A pyserial port that reads without blocking under trio (VMIN 1 after every
    setting a client changes), on which missing modem lines (a pty has none) read as
    off and setting them does nothing, as pyserial's own ``open`` tolerates."""

    cts, dsr, ri, cd = (_lenient_line(name) for name in ("cts", "dsr", "ri", "cd"))

    def _reconfigure_port(self, force_update: bool = False) -> None:
        super()._reconfigure_port(force_update)
        wait_for_one_byte(self.fd)   # called by open, before fileno() works

    def _set_line(self, update: Callable[[], None]) -> None:
        try:
            update()
        except OSError as exc:
            if exc.errno not in _NO_LINES:
                raise

    def _update_dtr_state(self) -> None:
        self._set_line(super()._update_dtr_state)

    def _update_rts_state(self) -> None:
        self._set_line(super()._update_rts_state)

    def _update_break_state(self) -> None:
        self._set_line(super()._update_break_state)


class _Replies:
    """PortManager's ``connection``: what it writes to the client, sent after each call."""

    def __init__(self) -> None:
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._pending.append(bytes(data))

    def take(self) -> bytes:
        data, self._pending = b"".join(self._pending), []
        return data


async def _serve_client(client: trio.abc.Stream, path: str, baud: int, log) -> None:
    """Pump bytes between ``client`` and the serial port ``path`` until either goes away."""
    try:
        port = _Port(path, baudrate=baud, timeout=0, write_timeout=0)
    except (serial.SerialException, ValueError, OSError) as exc:
        log.warning("rfc2217_port_unavailable", path=path, error=str(exc))
        return
    device = FdStream(port.fileno(), on_close=port.close)
    replies = _Replies()
    manager = PortManager(port, replies)   # queues its opening Telnet requests
    send_lock = trio.Lock()

    async def to_client(data: bytes) -> None:
        if data:
            async with send_lock:
                await client.send_all(data)

    async def from_client() -> None:
        await to_client(replies.take())
        while data := await client.receive_some():
            to_port = b"".join(manager.filter(data))   # settings are applied on the way
            await to_client(replies.take())
            if to_port:
                await device.send_all(to_port)

    async def from_port() -> None:
        while data := await device.receive_some():
            await to_client(b"".join(manager.escape(data)))

    async def pump(copy: Callable[[], Awaitable[None]], nursery: trio.Nursery) -> None:
        try:
            await copy()
        except _LINK_ERRORS:
            pass
        finally:
            nursery.cancel_scope.cancel()   # one side gone: the connection ends

    log.info("rfc2217_client", path=path)
    async with device, trio.open_nursery() as nursery:
        nursery.start_soon(pump, from_client, nursery)
        nursery.start_soon(pump, from_port, nursery)


async def serve_rfc2217(path: str, port: int = 0, *, host: str = "127.0.0.1", baud: int = 115200,
                        task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve the serial port ``path`` over RFC 2217 until cancelled; ``started((host, port))``.

    Listens on loopback unless ``host`` says otherwise (``0.0.0.0``: every interface);
    port 0 picks a free port. ``baud`` is the rate the port opens at, until the
    client sets its own.
    """
    log = structlog.get_logger()
    listeners = await trio.open_tcp_listeners(port, host=host)
    async with listeners[0] as listener:
        for extra in listeners[1:]:
            await extra.aclose()
        task_status.started((host, listener.socket.getsockname()[1]))
        while True:
            client = await listener.accept()
            async with client:
                await _serve_client(client, path, baud, log)


def main(argv: list[str] | None = None) -> None:
    """``python -m pgt.backends._rfc2217_server PATH [--host H] [--port P] [--baud B]``."""
    parser = argparse.ArgumentParser(prog="python -m pgt.backends._rfc2217_server",
                                     description="Serve a serial port over RFC 2217.")
    parser.add_argument("path", help="the serial port, e.g. /dev/ttyACM0")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    parser.add_argument("--port", type=int, default=3333, help="TCP port (default: 3333)")
    parser.add_argument("--baud", type=int, default=115200, help="initial rate (default: 115200)")
    args = parser.parse_args(argv)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(lambda task_status: serve_rfc2217(
                args.path, args.port, host=args.host, baud=args.baud, task_status=task_status))
            print(f"serving {args.path} on rfc2217://{host}:{port}?baud={args.baud}", flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
