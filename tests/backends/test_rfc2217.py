"""rfc2217://: a ring whose serial port another host serves over RFC 2217 (ser2net).

The client is pyserial's own; the server is ours (``serve_rfc2217``, around pyserial's
PortManager) in front of the emulated microcontroller on a real pty, so every byte
crosses a real pty, a real TCP connection and both ends of the Telnet/RFC 2217
protocol. Nothing is mocked. pyserial's client blocks in threads and sockets that
trio's autojump clock cannot see, so these tests run on real time, briefly.
"""

import json
import socket
import threading
from functools import partial

import numpy as np
import pytest
import trio
from structlog.testing import capture_logs

from pgt._config import load_config
from pgt._runloop import run_training
from pgt.backends import (DeviceUnavailable, EmulatedDevice, EmulatorConfig, ReservoirURLError,
                          open_reservoir, serve_pty, serve_rfc2217, serve_tcp)
from pgt.backends._transport import open_rfc2217
from pgt.kernels import RingParams
from tests.backends.test_transport import forward_through_unplug, small_device

# pyserial 3.5's client calls Thread.setDaemon and setName (deprecated since Python 3.10);
# harmless, but under filterwarnings = error its open would fail on them.
pytestmark = pytest.mark.filterwarnings(r"ignore:setDaemon\(\) is deprecated:DeprecationWarning",
                                        r"ignore:setName\(\) is deprecated:DeprecationWarning")

SETTINGS = ["train.steps=4", "train.eval_every=2", "train.checkpoint_every=0",
            "data.batch_size=8", "estimator.k=1"]


def reader_threads():
    return [t for t in threading.enumerate() if t.name.startswith("pySerial RFC 2217")]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def train(tmp_path, name, url):
    cfg = load_config(None, SETTINGS + [f'reservoir.url="{url}"'])
    await run_training(cfg, tmp_path / name, resume=False)
    lines = (tmp_path / name / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] in ("step", "eval")]


async def test_a_run_over_rfc2217_equals_the_run_on_the_serial_port_itself(tmp_path):
    async with trio.open_nursery() as nursery:
        # 8 nodes, not 24: a third of the bytes (pyserial moves them one at a time)
        path = await nursery.start(serve_pty, EmulatedDevice(EmulatorConfig(ring=RingParams(nodes=8))))
        direct = await train(tmp_path, "serial", f"serial://{path}?baud=115200")
        host, port = await nursery.start(serve_rfc2217, path)
        remote = await train(tmp_path, "rfc2217", f"rfc2217://{host}:{port}?baud=115200")
        nursery.cancel_scope.cancel()
    # The same bytes reach the same emulator: the losses are equal, not just close.
    assert [e["event"] for e in remote] == [e["event"] for e in direct]
    assert [e["loss"] for e in remote if e["event"] == "step"] == \
           [e["loss"] for e in direct if e["event"] == "step"]
    assert len([e for e in remote if e["event"] == "step"]) == 4
    assert [e["test_accuracy"] for e in remote if e["event"] == "eval"] == \
           [e["test_accuracy"] for e in direct if e["event"] == "eval"]
    assert not reader_threads()


@pytest.fixture
async def served_pty():
    """A raw pty behind an RFC 2217 server: (the pty's master fd, the server's address)."""
    import os
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def serve(task_status):
            with scope:
                await serve_rfc2217(os.ttyname(slave), task_status=task_status)

        address = await nursery.start(serve)
        yield master, address, scope
        nursery.cancel_scope.cancel()
    os.close(slave)
    os.close(master)


async def read_master(master, n):
    import os

    got = b""
    with trio.fail_after(5):
        while len(got) < n:
            await trio.lowlevel.wait_readable(master)
            got += os.read(master, 65536)
    return got


async def test_bytes_cross_both_ways_deadlines_work_and_a_closed_stream_says_so(served_pty):
    import os

    master, (host, port), _ = served_pty
    os.set_blocking(master, False)
    stream = await open_rfc2217(host, port, 115200)
    payload = bytes(range(256)) * 20   # 0xFF is Telnet's IAC: escaped on the way and back
    async with stream:
        await stream.send_all(payload)
        assert await read_master(master, len(payload)) == payload
        with pytest.raises(trio.TooSlowError):   # nothing to read: the deadline ends the wait
            with trio.fail_after(0.2):
                await stream.receive_some()
        os.write(master, payload)
        got = b""
        with trio.fail_after(5):
            while len(got) < len(payload):
                got += await stream.receive_some()
        assert got == payload   # the read the deadline cancelled lost nothing
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await stream.receive_some()
    assert not reader_threads()


async def test_a_server_that_goes_away_breaks_the_stream(served_pty):
    _, (host, port), scope = served_pty
    async with await open_rfc2217(host, port, 115200) as stream:
        scope.cancel()   # the server's host goes away: its connection closes
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
            while True:
                await stream.receive_some()
    with pytest.raises(OSError, match=f"cannot connect to the RFC 2217 server {host}:{port}"):
        await open_rfc2217(host, port, 115200)


async def test_an_open_cancelled_midway_leaves_no_connection_behind(served_pty):
    _, (host, port), _ = served_pty
    with trio.move_on_after(0.05) as scope:   # pyserial's negotiation takes longer
        await open_rfc2217(host, port, 115200)
    assert scope.cancelled_caught
    with trio.fail_after(10):   # the abandoned open closes the port it got
        while reader_threads():
            await trio.sleep(0.05)
    async with await open_rfc2217(host, port, 115200):   # and the server is free again
        pass


@pytest.mark.parametrize(("url", "problem"), [
    ("rfc2217://127.0.0.1", "needs host:port (rfc2217://"),
    ("rfc2217://:3333", "needs host:port (rfc2217://"),
    ("rfc2217://127.0.0.1:notaport", "Port could not be cast"),
    ("rfc2217://127.0.0.1:3333?wobble=1", "unknown parameter 'wobble'"),
    ("rfc2217://127.0.0.1:3333?baud=0", "baud=0 is not a rate"),
    ("rfc2217://127.0.0.1:3333?baud=fast", "baud='fast' is not valid"),
])
async def test_a_bad_url_is_a_one_line_error_naming_the_problem(url, problem):
    with pytest.raises(ReservoirURLError, match=problem.replace("(", r"\(")) as info:
        async with open_reservoir(url):
            pass
    assert "\n" not in str(info.value)


async def test_nothing_listening_is_a_one_line_error_naming_the_url():
    url = f"rfc2217://127.0.0.1:{free_port()}?open_timeout_s=0.3"
    with pytest.raises(DeviceUnavailable) as info:
        async with open_reservoir(url):
            pass
    message = str(info.value)
    assert message.startswith(f"device at {url}: cannot connect to the RFC 2217 server 127.0.0.1:")
    assert "\n" not in message


async def test_a_port_that_speaks_no_rfc2217_is_a_one_line_error():
    # a raw TCP port (socket://, ser2net's raw accepter) negotiates nothing
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(serve_tcp, small_device())
        url = f"rfc2217://{host}:{port}?open_timeout_s=0.3"
        with pytest.raises(DeviceUnavailable, match="does not seem to support RFC2217") as info:
            async with open_reservoir(url):
                pass
        nursery.cancel_scope.cancel()
    assert "\n" not in str(info.value) and url in str(info.value)


async def test_a_server_that_goes_away_mid_run_is_reconnected_like_an_unplugged_port():
    device = small_device()
    u = np.random.default_rng(0).uniform(-1, 1, (2, 4))
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            path = await nursery.start(serve_pty, device)
            scope = trio.CancelScope()

            async def serve(port, task_status):
                with scope:
                    await serve_rfc2217(path, port, task_status=task_status)

            _, port = await nursery.start(serve, 0)
            url = f"rfc2217://127.0.0.1:{port}?log_trials=1&backoff_max_s=0.2"
            async with open_reservoir(url) as reservoir:
                got = [await reservoir.forward(u) for _ in range(2)]
                scope.cancel()   # the server's host goes away mid-run, and comes back later

                async def come_back():
                    nonlocal scope
                    await trio.sleep(0.8)
                    scope = trio.CancelScope()
                    await nursery.start(serve, port)

                nursery.start_soon(come_back)
                with trio.fail_after(30):
                    got += [await reservoir.forward(u) for _ in range(3)]
            nursery.cancel_scope.cancel()
    assert all(np.array_equal(g, got[0]) for g in got)
    faults = [e["error"] for e in logs if e["event"] == "device_fault"]
    assert any("LinkLost" in f for f in faults)                           # the link broke
    assert any("cannot connect to the RFC 2217 server" in f for f in faults)   # and stayed down
    assert [e["event"] for e in logs].count("device_reconnect") == 1
    assert [e["trial_id"] for e in logs if e["event"] == "trial_accepted"] == [1, 2, 3, 4, 5]
    assert not reader_threads()


async def test_a_port_unplugged_behind_the_server_is_found_again(tmp_path):
    # the emulator pulls its cable: the pty vanishes behind the server, which drops the
    # client; reconnections fail until the pty (at its stable link) is back
    device = small_device(unplug_at=3, unplug_s=0.3)
    link = tmp_path / "tty"

    async def served(task_status):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_pty, device, link=link))
            task_status.started(await nursery.start(serve_rfc2217, str(link)))

    with trio.fail_after(30):
        await forward_through_unplug(lambda address: f"rfc2217://{address[0]}:{address[1]}?baud=115200",
                                     served)
    assert not reader_threads()
