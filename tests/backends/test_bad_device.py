"""Bad input from a device never reaches the caller: a clear error, or a retry.

The device is the emulated microcontroller with a firmware bug switched in: a
``tamper`` function rewrites its reply bytes (wrong sizes, out-of-range values,
unknown types, another protocol version). It stays a real protocol peer on an
in-memory link; nothing is mocked. Time runs on the autojump clock.
"""

import binascii
import struct

import numpy as np
import pytest
import trio
from cobs import cobs
from structlog.testing import capture_logs

from pgt.backends import DeviceUnavailable, EmulatedDevice, EmulatorConfig
from pgt.backends._device import open_device
from pgt.backends._device_link import Options
from pgt.backends._emulate import MemoryLink
from pgt.backends._session import single_errors
from pgt.backends._wire import decode_frame
from pgt.kernels import RingParams

CONFIG = EmulatorConfig(ring=RingParams(nodes=3), n_inputs=4, max_batch=4)
OPTIONS = Options(open_timeout_s=3, quarantine_after=3, quarantine_s=5, log_trials=True)


def frame(version, msg_type, seq, trial_id, payload):
    """A frame built by hand, so it can break the rules the codec enforces."""
    body = struct.pack("<BBHIH", version, msg_type, seq, trial_id, len(payload)) + payload
    return cobs.encode(body + binascii.crc_hqx(body, 0xFFFF).to_bytes(2, "little")) + b"\0"


class BuggyDevice(EmulatedDevice):
    """The emulator, with ``tamper(frame, n)`` rewriting its n-th reply of a type."""

    def __init__(self, tamper, times=10**9):
        super().__init__(CONFIG)
        self.tamper, self.times, self.seen = tamper, times, {}

    async def _answer(self, item):
        reply = await super()._answer(item)
        if reply is None:
            return None
        decoded = decode_frame(reply)
        kind = decoded.message.TYPE.name
        self.seen[kind] = self.seen.get(kind, 0) + 1
        if self.seen[kind] <= self.times:
            return self.tamper(decoded, reply) or reply
        return reply


async def forward_once(device, u=None):
    with single_errors():
        async with trio.open_nursery() as nursery:
            link = MemoryLink(device, nursery)
            async with open_device(link.connect, OPTIONS, "buggy") as reservoir:
                out = await reservoir.forward(np.full((2, 4), 0.25) if u is None else u)
            nursery.cancel_scope.cancel()
    return out


def result_payload(batch, n_features, scale, bits, codes):
    return struct.pack("<HHfB", batch, n_features, scale, bits) + codes


def only(kind, make):
    return lambda f, raw: make(f) if f.message.TYPE.name == kind else None


@pytest.mark.parametrize(("name", "tamper", "error"), [
    ("another protocol version", only("HELLO_REPLY", lambda f: frame(2, 0x81, f.seq, f.trial_id,
                                                                      f.message.to_payload())),
     "protocol version 2"),
    ("HELLO with features out of range", only("HELLO_REPLY", lambda f: frame(
        1, 0x81, f.seq, f.trial_id, struct.pack("<BBHHHH", 1, 1, 4, 3, 13, 4))),
     "no valid reply to HELLO"),
    ("an unknown message type", only("HELLO_REPLY", lambda f: frame(1, 0x86, f.seq, f.trial_id, b"")),
     "no valid reply to HELLO"),
    ("a configuration other than the one asked for", only("CONFIGURE_ACK", lambda f: frame(
        1, 0x82, f.seq, f.trial_id, bytes([8, 0, 0, 1, 0, 1, 0, 1, 1]))), "another configuration"),
])
async def test_a_device_that_cannot_be_verified_is_a_clear_error(autojump_clock, name, tamper, error):
    with pytest.raises(DeviceUnavailable, match=error) as info:
        await forward_once(BuggyDevice(tamper))
    assert "\n" not in str(info.value)


RESULT_BUGS = {
    "too few features": lambda f: frame(1, 0x83, f.seq, f.trial_id, result_payload(
        2, 11, 2.0, 16, bytes(2 * 2 * 11))),
    "another batch size": lambda f: frame(1, 0x83, f.seq, f.trial_id, result_payload(
        1, 12, 2.0, 16, bytes(2 * 12))),
    "another resolution": lambda f: frame(1, 0x83, f.seq, f.trial_id, result_payload(
        2, 12, 2.0, 8, bytes(24))),
    "a NaN scale": lambda f: frame(1, 0x83, f.seq, f.trial_id, result_payload(
        2, 12, float("nan"), 16, bytes(48))),
    "a negative scale": lambda f: frame(1, 0x83, f.seq, f.trial_id, result_payload(
        2, 12, -1.0, 16, bytes(48))),
    "a zero scale": lambda f: frame(1, 0x83, f.seq, f.trial_id, result_payload(
        2, 12, 0.0, 16, bytes(48))),
    "a truncated payload": lambda f: frame(1, 0x83, f.seq, f.trial_id, result_payload(
        2, 12, 2.0, 16, bytes(40))),
    "an unknown message type": lambda f: frame(1, 0x8F, f.seq, f.trial_id, b"\1\2"),
    "an ERROR code out of range": lambda f: frame(1, 0xFF, f.seq, f.trial_id, b"\x63oops"),
    "a HARDWARE_FAULT": lambda f: frame(1, 0xFF, f.seq, f.trial_id, b"\x08adc"),
}


@pytest.mark.parametrize("bug", sorted(RESULT_BUGS))
async def test_a_bad_result_is_retried_and_never_returned(autojump_clock, bug):
    clean = await forward_once(EmulatedDevice(CONFIG))
    with capture_logs() as logs:
        got = await forward_once(BuggyDevice(only("RESULT", RESULT_BUGS[bug]), times=2))
    np.testing.assert_array_equal(got, clean)
    faults = {e["event"] for e in logs} & {"device_fault", "device_retry"}
    assert faults, f"{bug} left no trace in the log"
    assert [e["trial_id"] for e in logs if e["event"] == "trial_accepted"] == [1]


async def test_a_device_that_always_answers_badly_is_quarantined_not_trusted(autojump_clock):
    device = BuggyDevice(only("RESULT", RESULT_BUGS["too few features"]))
    with capture_logs() as logs:
        with trio.move_on_after(60):
            await forward_once(device)
            pytest.fail("a bad RESULT was returned")
    names = [e["event"] for e in logs]
    assert "device_quarantined" in names and "trial_accepted" not in names
    assert any("RESULT of shape (2, 11), expected (2, 12)" in e.get("error", "") for e in logs)


async def test_a_firmware_that_never_answers_is_a_clear_error(autojump_clock):
    with pytest.raises(DeviceUnavailable, match="no valid reply to HELLO"):
        await forward_once(BuggyDevice(lambda f, raw: b"\0"))   # an empty frame: no reply


async def test_a_stall_longer_than_every_retry_loses_the_link_not_the_trial(autojump_clock):
    device = BuggyDevice(lambda f, raw: None)
    device.config = EmulatorConfig(ring=RingParams(nodes=3), n_inputs=4, max_batch=4,
                                   latency_s=30.0)   # a ring that takes 30 s per FORWARD
    with capture_logs() as logs:
        with trio.move_on_after(20):
            await forward_once(device)
    assert "device_fault" in {e["event"] for e in logs}
    assert "trial_accepted" not in {e["event"] for e in logs}
