"""Serving the emulated microcontroller over a pty, a TCP socket or an in-memory link.

Each server owns its tasks (``nursery.start`` reports the address once listening)
and survives its host: a host that closes the link and opens it again finds the
same device, its configuration, parked state and replay cache as they were. TCP
serves one connection at a time; one that arrives meanwhile waits in the listen
backlog until the current one closes (docs/protocol.md §5). The ``unplug_at`` fault
pulls the cable: the link is closed, the device powers off (its next HELLO reports
``power_on``) and for ``unplug_s`` seconds there is nothing to connect to; then the
pty or the socket is back (a pty gets a new /dev/pts number, so ``link`` keeps a
stable symlink to the current one).
"""

from __future__ import annotations

import os
import tty
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import trio

from pgt.backends._emulator import EmulatedDevice, EmulatorConfig, Unplugged
from pgt.backends._faults import FAULT_KINDS
from pgt.backends._messages import ResetCause
from pgt.backends._transport import FdStream

__all__ = ["MemoryLink", "emulate", "fault_summary", "serve_pty", "serve_tcp"]

_LINK_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError)


async def _serve_link(device: EmulatedDevice, stream: trio.abc.Stream) -> bool:
    """Serve one link until it closes; True if it ended by an unplug fault."""
    try:
        async with stream:
            await device.serve(stream)
    except Unplugged:
        device.reset(ResetCause.POWER_ON)
        return True
    except _LINK_ERRORS:
        pass
    return False


def _replace_link(link: Path, target: str) -> None:
    tmp = link.with_name(link.name + ".new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)   # atomic: a host opening ``link`` sees the old or the new pty


async def serve_pty(device: EmulatedDevice, *, link: str | Path | None = None,
                    announce: Callable[[str], None] = lambda path: None,
                    task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``device`` on a new pty; ``task_status.started(path)`` names its slave.

    After an unplug the new pty's path goes to ``announce`` (and to ``link``).
    """
    first = True
    while True:
        master, slave = os.openpty()
        tty.setraw(slave)   # no echo or newline translation: bytes pass as they are
        path = os.ttyname(slave)
        if link is not None:
            _replace_link(Path(link), path)
        if first:
            task_status.started(path)
            first = False
        else:
            announce(path)
        try:
            # Holding the slave open keeps the master readable while no host is attached.
            unplugged = await _serve_link(device, FdStream(master))
        finally:
            os.close(slave)
        if not unplugged:
            return
        await trio.sleep(device.config.faults.unplug_s)


async def serve_tcp(device: EmulatedDevice, port: int = 0, *, host: str = "127.0.0.1",
                    task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``device`` to one TCP client at a time; ``started((host, port))``.

    Listens on loopback unless ``host`` says otherwise; port 0 picks a free port,
    which is kept across an unplug.
    """
    first = True
    while True:
        listeners = await trio.open_tcp_listeners(port, host=host)
        port = listeners[0].socket.getsockname()[1]
        if first:
            task_status.started((host, port))
            first = False
        unplugged = False
        async with listeners[0] as listener:
            for extra in listeners[1:]:
                await extra.aclose()
            while not unplugged:
                unplugged = await _serve_link(device, await listener.accept())
        await trio.sleep(device.config.faults.unplug_s)


class MemoryLink:
    """An in-process cable to ``device``: ``connect()`` returns the host's end.

    Each connection is served in ``nursery``; while unplugged, ``connect`` raises
    ConnectionRefusedError as a missing device would.
    """

    def __init__(self, device: EmulatedDevice, nursery: trio.Nursery) -> None:
        self.device, self._nursery = device, nursery
        self._unplugged = False

    async def connect(self) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        if self._unplugged:
            raise ConnectionRefusedError("emulated device is unplugged")
        from trio.testing import memory_stream_pair   # imports pytest: only in here

        host_end, device_end = memory_stream_pair()
        self._nursery.start_soon(self._serve, device_end)
        return host_end

    async def _serve(self, stream: trio.abc.Stream) -> None:
        if await _serve_link(self.device, stream):
            self._unplugged = True
            await trio.sleep(self.device.config.faults.unplug_s)
            self._unplugged = False


def fault_summary(counts: Counter) -> str:
    """One line: how many faults of each kind were injected."""
    kinds = ", ".join(f"{counts[k]} {k}" for k in FAULT_KINDS if counts[k])
    return f"injected faults: {kinds or 'none'}"


async def emulate(config: EmulatorConfig, *, tcp_port: int | None = None, host: str = "127.0.0.1",
                  link: str | None = None, announce: Callable[[str], None] = print) -> None:
    """Run an emulated microcontroller on a pty (default) or TCP until cancelled.

    ``announce`` gets one line naming the URL a host opens (and later pty paths),
    one line per fault injected (``injected reset on FORWARD seq 812 trial 40: watchdog``)
    and, when faults are configured, their ``fault_summary`` when it stops.
    """
    device = EmulatedDevice(config, on_fault=lambda fault: announce(str(fault)))
    baud = f"?baud={config.baud:.0f}" if config.baud else ""
    try:
        async with trio.open_nursery() as nursery:
            if tcp_port is None:
                path = await nursery.start(partial(serve_pty, device, link=link,
                                                   announce=lambda p: announce(f"replugged: serial://{p}")))
                announce(f"emulating {config.firmware_id} on serial://{path}{baud}"
                         + (f" (stable link: serial://{link}{baud})" if link else ""))
            else:
                where = await nursery.start(partial(serve_tcp, device, tcp_port, host=host))
                announce(f"emulating {config.firmware_id} on socket://{where[0]}:{where[1]}{baud}")
    finally:
        if config.faults.active:
            announce(fault_summary(device.fault_counts))
