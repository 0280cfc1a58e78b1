"""Transports over real ptys and loopback TCP: bytes, deadlines, hangups, unplug and replug."""

import os
import tty

import numpy as np
import pytest
import trio
from structlog.testing import capture_logs

from pgt.backends import EmulatedDevice, EmulatorConfig, FaultSpec, open_reservoir, serve_pty, serve_tcp
from pgt.backends._transport import FdStream, open_serial
from pgt.kernels import RingParams


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    yield master, path
    os.close(slave)


async def test_a_serial_port_moves_bytes_both_ways(pty_pair):
    master, path = pty_pair
    port, device = open_serial(path, 115200), FdStream(master)
    async with port, device:
        await port.send_all(b"\x00hello\x00")
        got = b""
        while len(got) < 7:
            got += await device.receive_some()
        assert got == b"\x00hello\x00"
        await device.send_all(bytes(range(256)) * 40)   # more than one read's worth
        got = b""
        with trio.fail_after(5):
            while len(got) < 10240:
                got += await port.receive_some()
        assert got == bytes(range(256)) * 40


async def test_a_read_honours_the_deadline_at_the_call_site(pty_pair):
    master, path = pty_pair
    async with open_serial(path, 115200) as port:
        with pytest.raises(trio.TooSlowError):
            with trio.fail_after(0.05):
                await port.receive_some()
        os.close(master)


async def test_a_hangup_ends_the_stream_and_a_closed_port_says_so(pty_pair):
    master, path = pty_pair
    port = open_serial(path, 115200)
    os.close(master)   # the device end goes away: end of stream (or a broken link)
    with trio.fail_after(5):
        try:
            assert await port.receive_some() == b""
        except trio.BrokenResourceError:
            pass
    await port.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await port.send_all(b"x")


def test_a_missing_port_is_an_os_error():
    with pytest.raises(OSError, match="/dev/nonexistent-tty"):
        open_serial("/dev/nonexistent-tty", 115200)


def small_device(**faults):
    return EmulatedDevice(EmulatorConfig(ring=RingParams(nodes=4), n_inputs=4, max_batch=8,
                                         faults=FaultSpec(**faults)))


async def forward_through_unplug(url, nursery_task):
    u = np.random.default_rng(0).uniform(-1, 1, (2, 4))
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(nursery_task)
            async with open_reservoir(url(address) + "&log_trials=1&backoff_max_s=0.2") as device:
                first = [await device.forward(u) for _ in range(5)]
            nursery.cancel_scope.cancel()
    assert all(np.array_equal(f, first[0]) for f in first)
    names = [e["event"] for e in logs]
    assert "device_fault" in names
    [back] = [e for e in logs if e["event"] == "device_reconnect"]
    assert back["reset_cause"] == "power_on"
    assert [e["trial_id"] for e in logs if e["event"] == "trial_accepted"] == [1, 2, 3, 4, 5]


async def test_a_pty_unplugged_and_replugged_is_found_again_through_its_link(tmp_path):
    device = small_device(unplug_at=3, unplug_s=0.3)
    link = tmp_path / "tty"
    await forward_through_unplug(
        lambda path: f"serial://{link}?baud=115200",
        lambda task_status: serve_pty(device, link=link, task_status=task_status))


async def test_a_socket_unplugged_and_replugged_is_reconnected():
    device = small_device(unplug_at=3, unplug_s=0.3)
    await forward_through_unplug(
        lambda address: f"socket://{address[0]}:{address[1]}?baud=12e6",
        lambda task_status: serve_tcp(device, 0, task_status=task_status))


async def test_the_emulator_listens_on_loopback_by_default():
    async with trio.open_nursery() as nursery:
        host, _ = await nursery.start(serve_tcp, small_device())
        assert host == "127.0.0.1"
        nursery.cancel_scope.cancel()
