"""docs/protocol.md, the host codec, the emulator and the reference firmware agree.

Each device-side test sends raw frames (bytes built by hand, or with the codec's
encode functions) to both device sides — the emulator (backends/_emulator.py) over
an in-memory stream, and the firmware's protocol core (tools/firmware/pgt_core.py)
directly — and reads the raw reply bytes. Host-side rules are checked against
hand-written device ends on memory streams. Time runs on the autojump clock, except
over TCP.
"""

from __future__ import annotations

import binascii
import re
import struct

import numpy as np
import pytest
import trio
import trio.testing
from cobs import cobs
from structlog.testing import capture_logs

from pgt.backends import (DeviceDataError, DeviceUnavailable, EmulatedDevice, EmulatorConfig,
                          open_reservoir)
from pgt.backends._device import open_device
from pgt.backends._device_link import Options, control_timeout
from pgt.backends._emulate import MemoryLink, serve_tcp
from pgt.backends._messages import (Configure, ErrorCode, Forward, HelloReply, HelloRequest, MsgType,
                                Ping, Result)
from pgt.backends._session import open_session
from pgt.backends._sim import SimRing
from pgt.backends._wire import (Frame, FrameDecoder, PayloadError, VersionError, decode_frame,
                            encode_frame, quantize_features)
from pgt.kernels import RingParams
from tests.backends.test_bad_device import CONFIG, BuggyDevice, forward_once, only
from tests.backends.test_wire import DOC, doc_hex_blocks
from tests.tools.test_firmware_core import Core, FakeRing, core_module

N_INPUTS, N_NODES, MAX_BATCH = 16, 24, 300   # a receive buffer big enough for 8 KB masks


def frame(msg_type: int, payload: bytes, *, seq: int = 7, trial_id: int = 42, version: int = 1,
          length: int | None = None) -> bytes:
    """A frame built by hand (struct, binascii, cobs), so it can break any rule."""
    length = len(payload) if length is None else length
    body = struct.pack("<BBHIH", version, msg_type, seq, trial_id, length) + payload
    return cobs.encode(body + struct.pack("<H", binascii.crc_hqx(body, 0xFFFF))) + b"\x00"


def configure_payload(bits: int, steps: bytes, nodes: bytes, settle: int = 0) -> bytes:
    return struct.pack("<BHHH", bits, settle, len(steps), len(nodes)) + steps + nodes


def forward_payload(batch: int, n: int, codes: list[int] | None = None) -> bytes:
    codes = [0] * (batch * n) if codes is None else codes
    return struct.pack(f"<HH{len(codes)}h", batch, n, *codes)


def unpack_reply(reply: bytes) -> tuple[int, int, int, int, bytes]:
    """(version, type, seq, trial_id, payload) of one reply frame, read by hand."""
    assert reply.endswith(b"\x00") and reply.count(0) == 1
    raw = cobs.decode(reply[:-1])
    version, msg_type, seq, trial_id, length = struct.unpack_from("<BBHIH", raw)
    assert struct.unpack("<H", raw[-2:])[0] == binascii.crc_hqx(raw[:-2], 0xFFFF)
    assert length == len(raw) - 12
    return version, msg_type, seq, trial_id, raw[10:-2]


def error_code(reply: bytes, *, seq: int = 7, trial_id: int = 42) -> ErrorCode:
    """The code of an ERROR reply that copies ``seq`` and ``trial_id``."""
    version, msg_type, got_seq, got_trial, payload = unpack_reply(reply)
    assert (version, msg_type, got_seq, got_trial) == (1, 0xFF, seq, trial_id)
    text = payload[1:].decode()
    assert text and "\n" not in text and len(payload) <= 129
    return ErrorCode(payload[0])


# --- the two device sides -----------------------------------------------------------

class EmulatorPeer:
    """The emulator on one end of an in-memory stream; ``feed`` writes the other end."""

    kind = "emulator"

    def __init__(self, nursery: trio.Nursery, config: EmulatorConfig) -> None:
        self.device = EmulatedDevice(config)
        self.host, device_end = trio.testing.memory_stream_pair()
        nursery.start_soon(self.device.serve, device_end)

    async def feed(self, wire: bytes, *, replies: int | None = None) -> list[bytes]:
        """The reply frames to ``wire``: ``replies`` of them, or all within 1 s."""
        await self.host.send_all(wire)
        got = b""
        with trio.move_on_after(1 if replies is None else 60):
            while replies is None or got.count(0) < replies:
                got += await self.host.receive_some()
        return [part + b"\x00" for part in got.split(b"\x00")[:-1]]

    @property
    def parked(self) -> bool:
        return self.device.parked

    @parked.setter
    def parked(self, value: bool) -> None:
        self.device.parked = value

    @property
    def driven(self) -> int:
        return self.device.stats["forwards_driven"]


class FirmwarePeer:
    """The firmware's protocol core with the deterministic FakeRing behind it."""

    kind = "firmware"

    def __init__(self, n_inputs: int, n_nodes: int, max_batch: int, **kw) -> None:
        self.ring = FakeRing(n_nodes)
        self.core = Core(self.ring, n_inputs, n_nodes, max_batch, "ring-fw 0.3", **kw)

    async def feed(self, wire: bytes, *, replies: int | None = None) -> list[bytes]:
        return [bytes(r) for r in self.core.feed(wire)]

    @property
    def parked(self) -> bool:
        return self.core.parked

    @parked.setter
    def parked(self, value: bool) -> None:
        self.core.parked = value

    @property
    def driven(self) -> int:
        return self.ring.samples


def make_peer(kind: str, nursery, n_inputs=N_INPUTS, n_nodes=N_NODES, max_batch=MAX_BATCH, **ring):
    if kind == "emulator":
        config = EmulatorConfig(ring=RingParams(nodes=n_nodes, **ring), n_inputs=n_inputs,
                                max_batch=max_batch)
        return EmulatorPeer(nursery, config)
    return FirmwarePeer(n_inputs, n_nodes, max_batch)


@pytest.fixture(params=["emulator", "firmware"])
async def peer(request, nursery, autojump_clock):
    return make_peer(request.param, nursery)


async def ask(peer, wire: bytes) -> bytes:
    (reply,) = await peer.feed(wire, replies=1)
    return reply


async def configure(peer, *, steps=(15,), nodes=(0, 1), bits=8, settle=0, seq=1) -> None:
    reply = await ask(peer, encode_frame(Configure(steps, nodes, bits, settle), seq=seq))
    assert unpack_reply(reply)[1] == MsgType.CONFIGURE_ACK


async def n_features(peer, seq=2) -> int:
    hello = decode_frame(await ask(peer, encode_frame(HelloRequest(), seq=seq))).message
    return hello.n_features


# --- 1, 4: CONFIGURE checks, their codes and their order ------------------------------

MASK_65535 = b"\x00" * 8191 + b"\x80"   # bit 65535 set: the first index no ring has

CONFIGURE_CASES = {
    "short": (b"\x0c\x00\x00\x01\x00", ErrorCode.BAD_PAYLOAD),
    "length": (configure_payload(12, b"\x01", b"\x01")[:-1], ErrorCode.BAD_PAYLOAD),
    "no step mask": (configure_payload(12, b"", b"\x01"), ErrorCode.BAD_PAYLOAD),
    "zero step mask": (configure_payload(12, b"\x00\x00", b"\x01"), ErrorCode.BAD_PAYLOAD),
    "no node mask": (configure_payload(12, b"\x01", b""), ErrorCode.BAD_PAYLOAD),
    "step index 65535": (configure_payload(12, MASK_65535, b"\x01"), ErrorCode.BAD_PAYLOAD),
    "node index 65535": (configure_payload(12, b"\x01", MASK_65535), ErrorCode.BAD_PAYLOAD),
    "empty mask before bits": (configure_payload(10, b"\x00", b"\x01"), ErrorCode.BAD_PAYLOAD),
    "index 65535 before bits": (configure_payload(10, MASK_65535, b"\x01"), ErrorCode.BAD_PAYLOAD),
    "bits 0": (configure_payload(0, b"\x01", b"\x01"), ErrorCode.BAD_CONFIG),
    "bits 10": (configure_payload(10, b"\x01", b"\x01"), ErrorCode.BAD_CONFIG),
    "bits 24": (configure_payload(24, b"\x01", b"\x01"), ErrorCode.BAD_CONFIG),
    "bits before ring size": (configure_payload(10, b"\x00\x00\x01", b"\x01"), ErrorCode.BAD_CONFIG),
    "step 16": (configure_payload(12, b"\x00\x00\x01", b"\x01"), ErrorCode.BAD_CONFIG),
    "node 24": (configure_payload(12, b"\x01", b"\x00\x00\x00\x01"), ErrorCode.BAD_CONFIG),
    # 9 + 300 * 16 * 24 * 2 bytes: no RESULT of max_batch samples fits a payload
    "RESULT too big": (configure_payload(16, b"\xff\xff", b"\xff\xff\xff"), ErrorCode.BAD_CONFIG),
}


@pytest.mark.parametrize("case", sorted(CONFIGURE_CASES))
async def test_configure_is_checked_in_the_documented_order(peer, case):
    payload, code = CONFIGURE_CASES[case]
    await configure(peer)
    assert error_code(await ask(peer, frame(0x02, payload))) == code
    assert not peer.parked and await n_features(peer) == 2   # a refused CONFIGURE changes nothing


async def test_a_refused_configure_leaves_a_parked_ring_parked(peer):
    bits_10 = frame(0x02, configure_payload(10, b"\x01", b"\x01"))
    assert error_code(await ask(peer, bits_10)) == ErrorCode.BAD_CONFIG
    assert peer.parked


async def test_the_host_codec_reads_unsupported_bits_as_a_bad_config():
    with pytest.raises(PayloadError, match="bits 10") as info:
        decode_frame(frame(0x02, configure_payload(10, b"\x01", b"\x01")))
    assert info.value.code == ErrorCode.BAD_CONFIG
    with pytest.raises(PayloadError) as info:
        decode_frame(frame(0x02, configure_payload(12, MASK_65535, b"\x01")))
    assert info.value.code == ErrorCode.BAD_PAYLOAD


@pytest.mark.parametrize("kind", ["emulator", "firmware"])
async def test_max_batch_is_what_a_forward_can_carry(kind, nursery, autojump_clock):
    # 4 + 2 * 32 * 1000 <= 65535 < 4 + 2 * 33 * 1000: HELLO never announces 33 here
    with pytest.raises(ValueError, match="1 to 32"):
        make_peer(kind, nursery, n_inputs=1000, n_nodes=4, max_batch=33)
    with pytest.raises(ValueError):
        make_peer(kind, nursery, n_inputs=32766, n_nodes=4, max_batch=1)
    peer = make_peer(kind, nursery, n_inputs=1000, n_nodes=4, max_batch=32)
    hello = decode_frame(await ask(peer, frame(0x01, b""))).message
    assert (hello.n_inputs, hello.max_batch) == (1000, 32)
    await configure(peer, steps=(999,), nodes=(0, 3), bits=12)
    codes = np.zeros((32, 1000), np.int16)
    result = decode_frame(await ask(peer, encode_frame(Forward(codes), seq=3))).message
    assert isinstance(result, Result) and result.codes.shape == (32, 2)


async def test_the_host_refuses_a_device_whose_forward_cannot_carry_one_sample(autojump_clock):
    huge = only("HELLO_REPLY", lambda f: frame(0x81, struct.pack("<BBHHHH", 1, 1, 32766, 3, 1, 1),
                                               seq=f.seq, trial_id=f.trial_id))
    with pytest.raises(DeviceUnavailable, match="cannot carry one sample of 32766 inputs"):
        await forward_once(BuggyDevice(huge))


# --- 2, 7: BAD_VERSION -------------------------------------------------------------

@pytest.mark.parametrize("version", [0, 2, 255])
async def test_bad_version_is_answered_in_version_1_with_seq_and_trial_id(peer, version):
    wire = frame(0x04, b"\x01\x02\x03\x04", version=version, seq=0xBEEF, trial_id=0xDEADBEEF)
    assert error_code(await ask(peer, wire), seq=0xBEEF, trial_id=0xDEADBEEF) == ErrorCode.BAD_VERSION
    with pytest.raises(VersionError) as info:   # the codec reads the same header fields
        decode_frame(wire)
    assert (info.value.seq, info.value.trial_id) == (0xBEEF, 0xDEADBEEF)


# --- 3: which types a device serves --------------------------------------------------

HELLO_REPLY = HelloReply(1, "x", 16, 24, 24, 64).to_payload()
NOT_REQUESTS = [
    (0x00, b""), (0x06, b""), (0x42, b"xyz"), (0x7F, b""), (0x80, b""),
    (0x81, HELLO_REPLY), (0x81, b"\x01\x02\x03"),                  # valid and invalid payloads
    (0x82, configure_payload(12, b"\x01", b"\x01")), (0x82, b""),
    (0x83, struct.pack("<HHfB", 1, 1, 1.0, 8) + b"\x07"), (0x84, b"\x01\x02\x03\x04"),
    (0x85, b""), (0x85, b"junk"), (0xFF, b"\x07parked"), (0xFF, b"\x63"),
]


@pytest.mark.parametrize(("msg_type", "payload"), NOT_REQUESTS,
                         ids=[f"0x{t:02x}-{len(p)}" for t, p in NOT_REQUESTS])
async def test_anything_but_a_request_type_is_unknown_type_whatever_its_payload(peer, msg_type, payload):
    assert error_code(await ask(peer, frame(msg_type, payload))) == ErrorCode.UNKNOWN_TYPE


async def test_the_length_field_is_checked_before_the_type(peer):
    wire = frame(0x84, b"\x01\x02\x03\x04", length=5)
    assert error_code(await ask(peer, wire)) == ErrorCode.BAD_PAYLOAD


# --- 5: settle -----------------------------------------------------------------------

async def forward_result(peer, codes: np.ndarray, seq: int) -> tuple[np.ndarray, float]:
    """The RESULT's codes, and how long the device took (trio time)."""
    t0 = trio.current_time()
    reply = await ask(peer, encode_frame(Forward(codes), seq=seq))
    return decode_frame(reply).message.codes, trio.current_time() - t0


async def test_settle_runs_zero_drive_round_trips_before_each_sample(nursery, autojump_clock):
    ring = RingParams(nodes=N_NODES, bias=0.3)   # with a bias, rest is not a fixed point
    config = EmulatorConfig(ring=ring, n_inputs=N_INPUTS, max_batch=8, round_trip_s=1e-3)
    peer = EmulatorPeer(nursery, config)
    u = np.random.default_rng(0).uniform(-1, 1, (2, N_INPUTS))
    codes = np.rint(u * 32767).astype(np.int16)
    got = {}
    for seq, settle in enumerate((0, 7), start=1):
        await configure(peer, steps=range(16), nodes=range(24), bits=16, settle=settle, seq=10 * seq)
        got[settle] = await forward_result(peer, codes, seq=10 * seq + 1)
    assert not np.array_equal(got[0][0], got[7][0])
    # the ring's time: batch * (settle + n_inputs) round trips
    assert got[0][1] == pytest.approx(2 * 16e-3) and got[7][1] == pytest.approx(2 * 23e-3)
    # sim://ring fed 7 zeros before each sample computes the same features (first 7 dropped)
    padded = np.concatenate([np.zeros((2, 7)), codes / 32767], axis=1)
    feats = np.asarray(await SimRing(ring, n_inputs=23, max_batch=8).forward(padded))
    want = quantize_features(feats.reshape(2, 23, N_NODES)[:, 7:].reshape(2, -1), 16, 2.0)
    np.testing.assert_array_equal(got[7][0], want)


async def test_settle_changes_nothing_but_time_on_a_ring_whose_rest_is_a_fixed_point(nursery, autojump_clock):
    peer = EmulatorPeer(nursery, EmulatorConfig(ring=RingParams(nodes=N_NODES), n_inputs=N_INPUTS,
                                                max_batch=8))
    codes = np.rint(np.random.default_rng(1).uniform(-1, 1, (3, N_INPUTS)) * 32767).astype(np.int16)
    await configure(peer, steps=range(16), nodes=range(24), bits=16, settle=0, seq=1)
    plain, _ = await forward_result(peer, codes, seq=2)
    await configure(peer, steps=range(16), nodes=range(24), bits=16, settle=50, seq=3)
    settled, _ = await forward_result(peer, codes, seq=4)
    np.testing.assert_array_equal(plain, settled)


# --- 6: the worked example -----------------------------------------------------------

def test_the_worked_example_states_the_sizes_the_codec_produces():
    example = DOC.read_text().split("## 9. Worked example")[1]
    decoded, wire, _ = doc_hex_blocks()
    said_decoded = int(re.search(r"Decoded frame \((\d+) bytes\)", example).group(1))
    said_wire = int(re.search(r"On the wire \((\d+) bytes\)", example).group(1))
    said_crc = int(re.search(r"CRC-16/CCITT-FALSE of the (\d+) bytes above", example).group(1))
    forward = encode_frame(Forward(np.array([[16384, -32767]])), seq=7, trial_id=42)
    assert forward == wire and cobs.decode(forward[:-1]) == decoded
    assert (said_decoded, said_wire, said_crc) == (len(decoded), len(wire), len(decoded) - 2) == (20, 22, 18)


# --- 8: FORWARD checks, their codes and their order ---------------------------------

FORWARD_CASES = {   # payload, configured first, expected code
    "short": (b"\x01\x00", True, ErrorCode.BAD_PAYLOAD),
    "length": (forward_payload(1, 16)[:-2], True, ErrorCode.BAD_PAYLOAD),
    "B = 0": (forward_payload(0, 16), True, ErrorCode.BAD_PAYLOAD),
    "n = 0": (forward_payload(1, 0), True, ErrorCode.BAD_PAYLOAD),
    "B = n = 0": (forward_payload(0, 0), True, ErrorCode.BAD_PAYLOAD),
    "B = 0 before the shape": (forward_payload(0, 15), True, ErrorCode.BAD_PAYLOAD),
    "code -32768": (forward_payload(1, 16, [-32768] + [0] * 15), True, ErrorCode.BAD_PAYLOAD),
    "code -32768 before the batch": (forward_payload(301, 1, [-32768] + [0] * 300), True,
                                     ErrorCode.BAD_PAYLOAD),
    "code -32768 before parked": (forward_payload(1, 16, [0] * 15 + [-32768]), False,
                                  ErrorCode.BAD_PAYLOAD),
    "batch": (forward_payload(301, 16), True, ErrorCode.BATCH_TOO_LARGE),
    "batch before the shape": (forward_payload(301, 1), True, ErrorCode.BATCH_TOO_LARGE),
    "batch before parked": (forward_payload(301, 1), False, ErrorCode.BATCH_TOO_LARGE),
    "shape": (forward_payload(1, 15), True, ErrorCode.SHAPE_MISMATCH),
    "shape before parked": (forward_payload(2, 17), False, ErrorCode.SHAPE_MISMATCH),
    "parked": (forward_payload(1, 16), False, ErrorCode.PARKED),
}


@pytest.mark.parametrize("case", sorted(FORWARD_CASES))
async def test_forward_is_checked_in_the_documented_order(peer, case):
    payload, configured, code = FORWARD_CASES[case]
    if configured:
        await configure(peer)
    assert error_code(await ask(peer, frame(0x03, payload))) == code
    assert peer.driven == 0 and peer.parked is not configured   # nothing driven, nothing changed


async def test_a_forward_longer_than_the_firmware_buffer_is_dropped_unanswered(nursery):
    peer = make_peer("firmware", nursery)
    await configure(peer)
    assert await peer.feed(frame(0x03, forward_payload(320, 16))) == []   # §3.3, §7
    assert error_code(await ask(peer, frame(0x03, forward_payload(301, 16)))) == ErrorCode.BATCH_TOO_LARGE


# --- 9: scale ------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [0.0, -0.0, -1.0, float("nan"), float("inf"), 1e-46])
def test_a_result_scale_must_be_finite_and_above_zero(scale):
    wire = frame(0x83, struct.pack("<HHfB", 1, 1, scale, 8) + b"\x07")
    with pytest.raises(PayloadError, match="scale"):
        decode_frame(wire)
    with pytest.raises(ValueError, match="scale"):
        EmulatorConfig(scale=scale)
    with pytest.raises(ValueError, match="scale"):
        Core(FakeRing(4), 4, 4, 4, "fw", scale=scale)


# --- 10: timeouts --------------------------------------------------------------------

def wire_bytes(payload: int) -> int:
    """E(P) of §4, typed from the document."""
    return (12 + payload) + (12 + payload) // 254 + 2


@pytest.mark.parametrize("baud", [0.0, 9600.0, 115200.0])
def test_control_deadlines_follow_the_documented_formula(baud):
    link = (lambda n: 10 * n / baud) if baud else (lambda n: 0.0)
    for message, payload in ((HelloRequest(), 0), (Ping(1), 4),
                             (Configure(range(16), range(24), 12), 7 + 2 + 3)):
        q = wire_bytes(payload)
        assert control_timeout(message, baud) == pytest.approx(max(0.05, 3 * link(q + max(q, 143))) + 0.1)


async def test_forward_deadlines_follow_the_documented_formula(autojump_clock):
    url = "emu://?inputs=16&nodes=24&bits=12&sample_steps=12-15&baud=9600&latency_ms=40"
    async with open_reservoir(url) as device:
        n_features = 4 * 24

        def expected(batch, device_time):
            wire = wire_bytes(4 + 2 * batch * 16) + wire_bytes(9 + (batch * n_features * 12 + 7) // 8)
            return max(0.05, 3 * (10 * wire / 9600 + device_time))

        assert device._forward_timeout(5) == pytest.approx(expected(5, 0.2 + 0.01 * 5))
        await device.forward(np.zeros((2, 16)))
        t = device._per_sample
        assert t == pytest.approx(0.04 / 2, rel=0.05)   # the emulator's latency, per sample
        assert device._forward_timeout(5) == pytest.approx(expected(5, 5 * t))


@pytest.mark.parametrize(("latency_ms", "retried"), [(590, False), (650, True)])
async def test_a_device_inside_the_documented_budget_is_not_retried(autojump_clock, latency_ms, retried):
    # first FORWARD of one sample, link rate unknown: 3 * (0.2 s + 10 ms) = 630 ms
    with capture_logs() as logs:
        async with open_reservoir(f"emu://?inputs=4&nodes=3&latency_ms={latency_ms}") as device:
            for _ in range(3):
                await device.forward(np.zeros((1, 4)))
    retries = [e for e in logs if e["event"] == "device_retry"]
    assert bool(retries) is retried
    assert all(e["reason"] == "timeout" and e["request"] == "FORWARD" for e in retries)


# --- 11: replay of ERROR, wrong types, trial ids, TCP, COBS --------------------------

REFUSALS = {
    "BAD_VERSION": frame(0x04, b"\x01\x02\x03\x04", version=2),
    "UNKNOWN_TYPE": frame(0x84, b"\x01\x02\x03\x04"),
    "BAD_PAYLOAD": frame(0x04, b"\x01\x02\x03"),
    "BAD_CONFIG": frame(0x02, configure_payload(10, b"\x01", b"\x01")),
    "PARKED": frame(0x03, forward_payload(1, 16)),
}


@pytest.mark.parametrize("code", sorted(REFUSALS))
async def test_an_error_reply_is_cached_and_replayed_to_a_retry(peer, code):
    wire = REFUSALS[code]
    first = await ask(peer, wire)
    assert error_code(first) == ErrorCode[code]
    peer.parked = False   # the state changed behind the cache's back
    assert await ask(peer, wire) == first
    if peer.kind == "emulator":
        assert peer.device.stats["replayed"] == 1
    assert peer.driven == 0
    if code == "PARKED":   # a new request (another seq) sees the state as it is now
        assert unpack_reply(await ask(peer, frame(0x03, forward_payload(1, 16), seq=8)))[1] == 0x83


async def test_a_dropped_frame_leaves_the_cache_alone(peer):
    wire = REFUSALS["PARKED"]
    first = await ask(peer, wire)
    assert await peer.feed(b"\x05\x01\x00" + frame(0x04, b"abcd")[:-3] + b"\x00") == []
    peer.parked = False
    assert await ask(peer, wire) == first


@pytest.mark.parametrize("msg_type", [0x01, 0x04])
async def test_the_trial_id_of_a_control_request_is_copied_whatever_it_is(peer, msg_type):
    payload = b"\x01\x02\x03\x04" if msg_type == 0x04 else b""
    reply = await ask(peer, frame(msg_type, payload, seq=0xFFFF, trial_id=0xDEADBEEF))
    assert unpack_reply(reply)[1:4] == (msg_type | 0x80, 0xFFFF, 0xDEADBEEF)


class RecordingDevice(EmulatedDevice):
    """The emulator, keeping every valid request it was sent."""

    def __init__(self, config: EmulatorConfig) -> None:
        super().__init__(config)
        self.requests: list[Frame] = []

    async def _answer(self, encoded: bytes):
        found = FrameDecoder().feed(encoded + b"\x00")
        self.requests += [f for f in found if isinstance(f, Frame)]
        return await super()._answer(encoded)


async def test_the_host_sends_trial_id_0_with_control_requests(autojump_clock):
    device = RecordingDevice(EmulatorConfig(ring=RingParams(nodes=3), n_inputs=4, max_batch=4))
    async with trio.open_nursery() as nursery:
        link = MemoryLink(device, nursery)
        async with open_device(link.connect, Options(), "recorded") as reservoir:
            await reservoir.forward(np.zeros((2, 4)))
            await trio.sleep(2.5)   # idle: the host PINGs
            await reservoir.forward(np.zeros((1, 4)))
        nursery.cancel_scope.cancel()
    by_type = {}
    for f in device.requests:
        by_type.setdefault(f.message.TYPE.name, []).append(f.trial_id)
    assert by_type["FORWARD"] == [1, 2]
    assert {name: set(ids) for name, ids in by_type.items() if name != "FORWARD"} == {
        "HELLO": {0}, "CONFIGURE": {0}, "PING": {0}, "SAFE": {0}}


async def fake_device_session(answer):
    """A session whose device end answers each request with ``answer(frame)`` (bytes)."""
    host_end, device_end = trio.testing.memory_stream_pair()
    requests = []

    async def device():
        decoder = FrameDecoder()
        while data := await device_end.receive_some():
            for f in decoder.feed(data):
                requests.append(f)
                await device_end.send_all(answer(f))

    return host_end, device, requests


async def test_a_reply_of_the_wrong_type_is_a_device_fault_not_resent(autojump_clock):
    # a SAFE_ACK with the PING's seq and trial id: resending would only replay it
    host_end, device, requests = await fake_device_session(
        lambda f: frame(0x85, b"", seq=f.seq, trial_id=f.trial_id))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(device)
        async with open_session(host_end, _NullLog()) as session:
            with pytest.raises(DeviceDataError, match="answered PING with SAFE_ACK") as info:
                await session.request(Ping(5), timeout=1.0, trial_id=9)
        nursery.cancel_scope.cancel()
    assert len(requests) == 1 and (info.value.seq, info.value.trial_id) == (requests[0].seq, 9)


async def test_a_frame_of_another_trial_id_is_stale_and_the_reply_is_taken(autojump_clock):
    host_end, device, _ = await fake_device_session(
        lambda f: frame(0x84, b"\x00\x00\x00\x00", seq=f.seq, trial_id=f.trial_id + 1)
        + frame(0x84, b"\x05\x00\x00\x00", seq=f.seq, trial_id=f.trial_id)
        + frame(0x84, b"\x05\x00\x00\x00", seq=f.seq, trial_id=f.trial_id))   # and a copy
    log = _NullLog()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(device)
        async with open_session(host_end, log) as session:
            assert await session.request(Ping(5), timeout=1.0, trial_id=3) == Ping(5).pong()
            assert session.stale == 2   # the other trial id, and the copy
        nursery.cancel_scope.cancel()
    assert [e for e, _ in log.events].count("device_stale_reply") == 2


class _NullLog:
    """A structlog-like logger that keeps (event, fields)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def __getattr__(self, level):
        return lambda event, **kw: self.events.append((event, kw))


async def test_the_client_reconnects_after_a_reply_of_the_wrong_type(autojump_clock):
    pong = only("RESULT", lambda f: frame(0x84, b"\x00\x00\x00\x00", seq=f.seq, trial_id=f.trial_id))
    clean = await forward_once(EmulatedDevice(CONFIG))
    with capture_logs() as logs:
        got = await forward_once(BuggyDevice(pong, times=1))
    np.testing.assert_array_equal(got, clean)
    [fault] = [e for e in logs if e["event"] == "device_fault"]
    assert "DeviceDataError: device answered FORWARD with PONG" in fault["error"]
    assert fault["trial_id"] == 1 and fault["seq"] is not None
    assert [e["trial_id"] for e in logs if e["event"] == "trial_accepted"] == [1]


async def tcp_exchange(stream, wire: bytes, timeout: float = 5.0) -> bytes:
    await stream.send_all(wire)
    got = b""
    with trio.fail_after(timeout):
        while got.count(0) < 1:
            got += await stream.receive_some()
    return got


async def test_a_new_tcp_connection_finds_the_device_state_and_cache_as_left():
    device = EmulatedDevice(EmulatorConfig(ring=RingParams(nodes=3), n_inputs=4, max_batch=4))
    forward = encode_frame(Forward(np.ones((2, 4), np.int16)), seq=2, trial_id=5)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(serve_tcp, device)
        async with await trio.open_tcp_stream(host, port) as first:
            ack = await tcp_exchange(first, encode_frame(Configure([3], [0, 2], 12), seq=1))
            assert unpack_reply(ack)[1] == MsgType.CONFIGURE_ACK
            result = await tcp_exchange(first, forward)
        async with await trio.open_tcp_stream(host, port) as second:
            assert await tcp_exchange(second, forward) == result   # replayed, not driven again
            assert (device.stats["replayed"], device.stats["forwards_driven"]) == (1, 1)
            hello = decode_frame(await tcp_exchange(second, encode_frame(HelloRequest(), seq=3))).message
            assert hello.n_features == 2 and hello.reset_cause.name == "POWER_ON"
            again = decode_frame(await tcp_exchange(second, encode_frame(Forward(np.ones((1, 4), np.int16)),
                                                                          seq=4))).message
            assert isinstance(again, Result)   # still configured: not PARKED
        nursery.cancel_scope.cancel()


async def test_a_second_tcp_connection_waits_until_the_first_closes():
    device = EmulatedDevice(EmulatorConfig(ring=RingParams(nodes=3), n_inputs=4, max_batch=4))
    ping = encode_frame(Ping(77), seq=9)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(serve_tcp, device)
        first = await trio.open_tcp_stream(host, port)
        await tcp_exchange(first, ping)
        async with await trio.open_tcp_stream(host, port) as second:
            await second.send_all(ping)
            with trio.move_on_after(0.3) as waited:
                await second.receive_some()
            assert waited.cancelled_caught   # not served while the first is open
            await first.aclose()
            with trio.fail_after(5):
                got = await second.receive_some()
            assert decode_frame(got).message == Ping(77).pong()
        nursery.cancel_scope.cancel()


def last_block_of_255(seq: int) -> bytes:
    """A FORWARD (B 8, n 16) whose decoded frame ends in 254 non-zero bytes after a 0x00."""
    codes = [0x0101] * 128
    codes[1] = 0x0001   # bytes 01 00: the last 0x00, 254 bytes before the end
    body = struct.pack("<BBHIH", 1, 0x03, seq, 0x01010101, 260) + forward_payload(8, 16, codes)
    return body + struct.pack("<H", binascii.crc_hqx(body, 0xFFFF))


async def test_cobs_is_the_standard_one_and_its_trailing_blocks_are_read_alike(peer):
    # the library the host uses: no block after a final 255 block; a decoder takes one
    assert cobs.encode(b"\x01" * 254) == b"\xff" + b"\x01" * 254
    assert cobs.decode(b"\xff" + b"\x01" * 254 + b"\x01") == b"\x01" * 254
    assert cobs.encode(b"\x11\x00") == b"\x02\x11\x01"
    raw = next(r for s in range(0x0101, 0xFFFF) if 0 not in (r := last_block_of_255(s))[-254:])
    plain = cobs.encode(raw)
    assert plain[-255] == 0xFF and plain.count(0) == 0
    extra = plain + b"\x01"   # what an encoder that closes every 255 block writes
    assert decode_frame(extra) == decode_frame(plain)
    assert bytes(core_module.cobs_decode(extra)) == bytes(core_module.cobs_decode(plain)) == raw
    seq, trial_id = struct.unpack_from("<HI", raw, 2)
    first = await ask(peer, plain + b"\x00")
    assert error_code(first, seq=seq, trial_id=trial_id) == ErrorCode.PARKED
    assert await ask(peer, extra + b"\x00") == first   # the same request: a replay


async def test_a_frame_whose_data_ends_in_zero_ends_in_an_empty_block(peer):
    wire = next(w for s in range(1000) if (w := encode_frame(Ping(s), seq=s, trial_id=s))[-2] == 0x01
                and cobs.decode(w[:-1])[-1] == 0)
    reply = await ask(peer, wire)
    assert unpack_reply(reply)[1] == MsgType.PONG
