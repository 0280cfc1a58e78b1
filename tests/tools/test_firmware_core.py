"""The reference firmware's protocol core (tools/firmware/pgt_core.py) under CPython.

Requests are built by the host codec, replies are read back by the host codec's
FrameDecoder and compared with the golden frames of tests/backends/test_wire.py and
the worked example of docs/protocol.md. Behind the core sits ``FakeRing``, a small
deterministic integer ring, not a mock of the protocol.
"""

from __future__ import annotations

import ast
import binascii
import importlib.util
import random
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from cobs import cobs

from pgt.backends._messages import (
    Configure,
    ConfigureAck,
    ErrorCode,
    ErrorReply,
    Forward,
    HelloReply,
    HelloRequest,
    MsgType,
    Ping,
    Pong,
    ResetCause,
    Result,
    Safe,
    SafeAck,
)
from pgt.backends._wire import Frame, FrameDecoder, dequantize_features, encode_frame
from tests.backends.test_wire import GOLDEN, V2_PING, doc_hex_blocks, raw_frame

FIRMWARE = Path(__file__).parents[2] / "tools" / "firmware"
_spec = importlib.util.spec_from_file_location("pgt_core", FIRMWARE / "pgt_core.py")
core_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(core_module)
Core = core_module.Core

ADC_FULL = 4095
ZERO = 2048   # DAC code of zero drive: rint(4095 / 2), ties to even


def golden(cls, **fields):
    """The wire bytes of the golden frame of message class ``cls`` (seq 7, trial 42)."""
    for message, wire in GOLDEN:
        if type(message) is cls and all(getattr(message, k) == v for k, v in fields.items()):
            return bytes.fromhex(wire)
    raise LookupError(cls)


class FakeRing:
    """Integer slot amplitudes that leak, rotate by one slot per round trip and saturate.

    The drive level enters each slot j with weight (j + 1) / 32, standing in for the
    ring's input mask; the detector reads the amplitude as ADC counts.
    """

    def __init__(self, n_nodes: int, cause: int = ResetCause.POWER_ON, fail_at: int | None = None,
                 fault: str = "DAC not responding"):
        self.amp = [0] * n_nodes
        self.level = ZERO
        self.cause = int(cause)
        self.fail_at, self.fault = fail_at, fault   # raise OSError(fault) at drive number fail_at
        self.drives: list[int] = []
        self.samples = 0
        self.parks = 0

    def reset_cause(self) -> int:
        return self.cause

    def _round_trip(self) -> None:
        a = self.amp
        self.amp = [min(ADC_FULL, a[j - 1] // 2 + self.level * (j + 1) // 32) for j in range(len(a))]

    def drive(self, code: int) -> None:
        if len(self.drives) == self.fail_at:
            raise OSError(self.fault)
        assert 0 <= code <= ADC_FULL
        self.drives.append(code)
        self.level = code
        self._round_trip()

    def wait(self, round_trips: int) -> None:
        for _ in range(min(round_trips, 40)):
            self._round_trip()

    def sample(self, slots: list[int]) -> list[int]:
        self.samples += 1
        return [self.amp[j] for j in slots]

    def park(self) -> None:
        self.parks += 1
        self.level = ZERO


class FixedDetector(FakeRing):
    """A ring whose detector reads the same counts on every round trip."""

    def __init__(self, counts: list[int]):
        super().__init__(len(counts))
        self.counts = counts

    def sample(self, slots: list[int]) -> list[int]:
        self.samples += 1
        return [self.counts[j] for j in slots]


def make(n_inputs=16, n_nodes=24, max_batch=64, cause=ResetCause.POWER_ON, ring=None, **kw):
    ring = ring or FakeRing(n_nodes, cause)
    return Core(ring, n_inputs, n_nodes, max_batch, "ring-fw 0.3", **kw), ring


def ask(core, message, *, seq=7, trial_id=42) -> Frame:
    replies = core.feed(encode_frame(message, seq=seq, trial_id=trial_id))
    assert len(replies) == 1
    (frame,) = FrameDecoder().feed(bytes(replies[0]))
    assert isinstance(frame, Frame), frame
    assert (frame.seq, frame.trial_id) == (seq, trial_id)
    return frame


def refused(core, wire: bytes) -> ErrorReply:
    replies = core.feed(wire)
    assert len(replies) == 1
    (frame,) = FrameDecoder().feed(bytes(replies[0]))
    assert isinstance(frame, Frame) and isinstance(frame.message, ErrorReply), frame
    assert (frame.seq, frame.trial_id) == (7, 42)
    return frame.message


def codes(rng, batch, n):
    return rng.integers(-32767, 32768, (batch, n), dtype=np.int16)


# --- CRC and COBS written out by hand --------------------------------------------

def test_crc_is_ccitt_false_like_the_host():
    assert core_module.crc16(b"123456789") == 0x29B1
    rng = random.Random(0)
    for n in range(0, 300, 7):
        data = bytes(rng.randrange(256) for _ in range(n))
        assert core_module.crc16(data) == binascii.crc_hqx(data, 0xFFFF)


@pytest.mark.parametrize("zeros", [0.0, 0.02, 0.5])
def test_cobs_matches_the_reference_implementation(zeros):
    rng = random.Random(int(zeros * 100))
    for n in list(range(0, 600, 13)) + [253, 254, 255, 508, 509, 510]:
        data = bytes(0 if rng.random() < zeros else rng.randrange(1, 256) for _ in range(n))
        assert bytes(core_module.cobs_encode(data)) == cobs.encode(data)
        assert bytes(core_module.cobs_decode(cobs.encode(data))) == data
    for bad in (b"\x05\x01\x00", b"\x03\x01", b"\x00"):
        with pytest.raises(ValueError):
            core_module.cobs_decode(bad)


# --- the golden frames and the worked example ------------------------------------

def test_hello_reply_is_the_golden_frame():
    core, _ = make(cause=ResetCause.WATCHDOG)
    assert bytes(core.feed(golden(HelloRequest))[0]) == golden(HelloReply)


def test_configure_ack_is_the_golden_frame_and_hello_then_reports_the_new_size():
    core, _ = make()
    assert bytes(core.feed(golden(Configure))[0]) == golden(ConfigureAck)
    assert not core.parked
    ack = ask(core, Configure(steps=[0, 3, 15], nodes=[1, 2], bits=8, settle=0), seq=8).message
    assert ack == ConfigureAck(steps=[0, 3, 15], nodes=[1, 2], bits=8, settle=0)
    assert ask(core, HelloRequest(), seq=9).message.n_features == 6


def test_a_configure_with_trailing_zero_mask_bytes_is_acked_in_canonical_form():
    core, _ = make()
    payload = bytes([16, 5, 0, 3, 0, 1, 0]) + b"\x01\x80\x00" + b"\x03"
    reply = core.feed(raw_frame(MsgType.CONFIGURE, payload))[0]
    (frame,) = FrameDecoder().feed(bytes(reply))
    assert frame.message == ConfigureAck(steps=[0, 15], nodes=[0, 1], bits=16, settle=5)
    assert frame.message.to_payload() == bytes([16, 5, 0, 2, 0, 1, 0, 1, 0x80, 3])


def test_ping_and_safe_get_the_golden_replies():
    core, ring = make()
    assert bytes(core.feed(golden(Ping))[0]) == golden(Pong)
    core.feed(golden(Configure))
    parks = ring.parks
    assert bytes(core.feed(golden(Safe))[0]) == golden(SafeAck)
    assert core.parked and ring.parks == parks + 1


def test_forward_after_reset_is_refused_with_the_golden_parked_error():
    core, ring = make(n_inputs=2, n_nodes=3)
    assert ring.parks == 1   # parked at start, before any request
    assert bytes(core.feed(golden(Forward))[0]) == golden(ErrorReply)
    assert ring.drives == []


def test_worked_example_forward_gets_the_documented_result_byte_for_byte():
    _, wire_forward, wire_result = doc_hex_blocks()
    ring = FixedDetector([1, 4095, 2048])
    core = Core(ring, 2, 3, 8, "ring-fw 0.3", scale=2.5, adc_full=ADC_FULL)
    ask(core, Configure(steps=[1], nodes=[0, 1, 2], bits=12), seq=6)
    assert bytes(core.feed(wire_forward)[0]) == wire_result == golden(Result, bits=12)
    # 16384 -> rint(49151 * 4095 / 65534) = 3071, -32767 -> 0; zero drive after the batch
    assert ring.drives == [3071, 0, ZERO]


# --- FORWARD -> RESULT: sizes, order and quantization ----------------------------

def reference(u: np.ndarray, cfg: Configure, n_nodes: int) -> tuple[np.ndarray, list[int]]:
    """Raw ADC counts and DAC codes of docs/protocol.md §3.2 run on a fresh FakeRing."""
    ring = FakeRing(n_nodes)
    raw = []
    for sample in u:
        if cfg.settle:
            ring.drive(ZERO)
            ring.wait(cfg.settle)
        row = []
        for i, code in enumerate(sample):
            ring.drive(round(Fraction((int(code) + 32767) * 4095, 65534)))
            if i in cfg.steps:
                row += ring.sample(list(cfg.nodes))
        raw.append(row)
    return np.array(raw), ring.drives + [ZERO]


@pytest.mark.parametrize(("cfg", "batch"), [
    (Configure(steps=[15], nodes=range(24), bits=12, settle=3), 5),
    (Configure(steps=[0, 7, 15], nodes=[0, 5, 23], bits=8, settle=0), 64),
    (Configure(steps=range(16), nodes=range(24), bits=16, settle=40), 3),
    (Configure(steps=[2, 3], nodes=[9], bits=12, settle=1), 1),
])
def test_result_has_the_configured_shape_order_and_quantization(cfg, batch):
    core, ring = make()
    ask(core, cfg, seq=1)
    u = codes(np.random.default_rng(batch), batch, 16)
    result = ask(core, Forward(u), seq=2, trial_id=99).message
    assert isinstance(result, Result)
    assert result.codes.shape == (batch, cfg.n_features) and result.bits == cfg.bits
    assert result.scale == pytest.approx(3.3, rel=1e-7)
    raw, drives = reference(u, cfg, 24)
    assert ring.drives == drives
    full = 2**cfg.bits - 1
    expected = [[round(Fraction(int(c) * full, ADC_FULL)) for c in row] for row in raw]
    assert result.codes.tolist() == expected
    features = dequantize_features(result.codes, cfg.bits, result.scale)
    assert np.abs(features - raw * result.scale / ADC_FULL).max() <= result.scale / (2 * full) + 1e-9


def test_samples_are_independent_of_the_batch_once_the_ring_has_settled():
    core, _ = make()
    ask(core, Configure(steps=[14, 15], nodes=range(24), bits=16, settle=40), seq=1)
    u = codes(np.random.default_rng(3), 4, 16)
    whole = ask(core, Forward(u), seq=2).message.codes
    single = ask(core, Forward(u[2:3]), seq=3).message.codes
    assert np.array_equal(single[0], whole[2])


# --- replay of a retried request ----------------------------------------------------

def test_a_retry_gets_the_cached_reply_without_driving_the_ring_twice():
    core, ring = make()
    ask(core, Configure(steps=[15], nodes=range(24)), seq=1)
    wire = encode_frame(Forward(codes(np.random.default_rng(0), 4, 16)), seq=2, trial_id=5)
    first = bytes(core.feed(wire)[0])
    drives, samples = len(ring.drives), ring.samples
    assert drives == 4 * 16 + 1
    for junk in (b"", b"\x00\x00", b"\x05\x01\x00", raw_frame(0x04, b"abcd")[:-3] + b"\x00"):
        core.feed(junk)   # empty frames and frames dropped unanswered leave the cache alone
        assert bytes(core.feed(wire)[0]) == first
    assert (len(ring.drives), ring.samples) == (drives, samples)


@pytest.mark.parametrize("change", [{"seq": 3, "trial_id": 5}, {"seq": 2, "trial_id": 6}])
def test_a_new_seq_or_trial_id_is_a_new_request_that_drives_again(change):
    core, ring = make()
    ask(core, Configure(steps=[15], nodes=range(24), settle=40), seq=1)
    u = codes(np.random.default_rng(0), 2, 16)
    a = ask(core, Forward(u), seq=2, trial_id=5)
    drives = len(ring.drives)
    b = ask(core, Forward(u), **change)
    assert len(ring.drives) == 2 * drives == 2 * (2 * (1 + 16) + 1)
    assert b.message == a.message


def test_another_request_in_between_replaces_the_cache():
    core, ring = make()
    ask(core, Configure(steps=[15], nodes=range(24)), seq=1)
    wire = encode_frame(Forward(codes(np.random.default_rng(0), 1, 16)), seq=2)
    core.feed(wire)
    ask(core, Ping(1), seq=3)
    drives = len(ring.drives)
    core.feed(wire)
    assert len(ring.drives) == drives + 17


def test_a_reset_empties_the_cache_and_parks():
    core, _ = make()
    ask(core, Configure(steps=[15], nodes=range(24)), seq=1)
    u = codes(np.random.default_rng(0), 1, 16)
    assert isinstance(ask(core, Forward(u)).message, Result)
    wire = encode_frame(Forward(u), seq=7, trial_id=42)   # the same request again
    core, ring = make(cause=ResetCause.SOFTWARE)   # the board restarted
    assert refused(core, wire).code == ErrorCode.PARKED and ring.drives == []
    assert ask(core, HelloRequest(), seq=3).message.reset_cause == ResetCause.SOFTWARE


# --- refusals and silent drops ----------------------------------------------------

@pytest.mark.parametrize(("wire", "code"), [
    (bytes.fromhex(V2_PING), ErrorCode.BAD_VERSION),
    (raw_frame(0x04, b"\x01\x00\x00\x00", length=5), ErrorCode.BAD_PAYLOAD),
    (raw_frame(0x42, b""), ErrorCode.UNKNOWN_TYPE),
    (raw_frame(0x84, b"\x01\x00\x00\x00"), ErrorCode.UNKNOWN_TYPE),   # a reply type
    (raw_frame(0x01, b"\x00"), ErrorCode.BAD_PAYLOAD),
    (raw_frame(0x05, b"\x00"), ErrorCode.BAD_PAYLOAD),
    (raw_frame(0x04, b"\x01\x02\x03"), ErrorCode.BAD_PAYLOAD),
    (raw_frame(0x02, bytes([12, 0, 0, 1, 0, 1, 0, 0, 1])), ErrorCode.BAD_PAYLOAD),   # no step
    (raw_frame(0x02, bytes([12, 0, 0, 1, 0, 1, 0, 1])), ErrorCode.BAD_PAYLOAD),      # short
    (raw_frame(0x02, bytes([10, 0, 0, 1, 0, 1, 0, 1, 1])), ErrorCode.BAD_CONFIG),    # bits 10
    (raw_frame(0x02, bytes([12, 0, 0, 3, 0, 1, 0, 0, 0, 1, 1])), ErrorCode.BAD_CONFIG),  # step 16
    (raw_frame(0x02, bytes([12, 0, 0, 1, 0, 4, 0, 1, 0, 0, 0, 1])), ErrorCode.BAD_CONFIG),  # node 24
    (raw_frame(0x03, b"\x01\x00\x10\x00" + b"\x00\x80" + b"\x00\x00" * 15), ErrorCode.BAD_PAYLOAD),
    (raw_frame(0x03, b"\x01\x00\x10\x00" + b"\x00\x00" * 15), ErrorCode.BAD_PAYLOAD),
    (raw_frame(0x03, b"\x00\x00\x10\x00"), ErrorCode.BAD_PAYLOAD),
    (raw_frame(0x03, b"\x01\x00"), ErrorCode.BAD_PAYLOAD),
    (encode_frame(Forward(np.zeros((65, 1), np.int16)), seq=7, trial_id=42), ErrorCode.BATCH_TOO_LARGE),
    (encode_frame(Forward(np.zeros((1, 15), np.int16)), seq=7, trial_id=42), ErrorCode.SHAPE_MISMATCH),
])
def test_a_bad_request_is_answered_with_its_error_and_changes_nothing(wire, code):
    core, ring = make()
    ask(core, Configure(steps=[15], nodes=[0, 1], bits=8, settle=2), seq=1)
    error = refused(core, wire)
    assert error.code == code and error.text and "\n" not in error.text
    assert ring.drives == [] and not core.parked
    assert ask(core, HelloRequest(), seq=2).message.n_features == 2


def test_the_bad_version_error_speaks_version_1():
    core, _ = make()
    reply = bytes(core.feed(bytes.fromhex(V2_PING))[0])
    assert cobs.decode(reply[:-1])[0] == 1


FLIPPED_PING = bytearray(golden(Ping))
FLIPPED_PING[12] ^= 0x10   # a data byte of the nonce, not a COBS code byte


@pytest.mark.parametrize("wire", [
    b"\x05\x01\x00",                                     # bad COBS
    cobs.encode(b"\x01\x03\x07\x00\x2a") + b"\x00",      # shorter than 12 bytes
    FLIPPED_PING,                                        # CRC mismatch
    b"\x01" * 5000 + b"\x00",                            # longer than any valid request
    encode_frame(Forward(np.zeros((65, 16), np.int16)), seq=7),   # §7: never sent by the host
])
def test_frames_failing_cobs_length_or_crc_are_dropped_silently(wire):
    core, _ = make()
    assert core.feed(wire) == []
    assert bytes(core.feed(golden(Ping))[0]) == golden(Pong)   # and the stream resynchronises


def test_a_configure_whose_result_overflows_the_device_limit_is_bad_config():
    core, _ = make(max_result=4096)
    assert refused(core, encode_frame(Configure(steps=range(16), nodes=range(24), bits=16),
                                      seq=7, trial_id=42)).code == ErrorCode.BAD_CONFIG
    assert core.parked
    assert isinstance(ask(core, Configure(steps=[15], nodes=range(24), bits=16)).message, ConfigureAck)


def test_a_hardware_fault_parks_the_ring_until_the_next_configure():
    ring = FakeRing(24, fail_at=20)
    core, _ = make(ring=ring)
    ask(core, Configure(steps=[15], nodes=range(24)), seq=1)
    u = codes(np.random.default_rng(0), 2, 16)
    error = refused(core, encode_frame(Forward(u), seq=7, trial_id=42))
    assert error.code == ErrorCode.HARDWARE_FAULT and "DAC not responding" in error.text
    assert core.parked and ring.parks == 2
    ring.fail_at = None
    assert ask(core, Forward(u), seq=8).message.code == ErrorCode.PARKED
    ask(core, Configure(steps=[15], nodes=range(24)), seq=9)
    assert isinstance(ask(core, Forward(u), seq=10).message, Result)


def test_a_long_fault_text_is_cut_to_128_bytes_of_whole_characters():
    core, _ = make(ring=FakeRing(24, fail_at=0, fault="é" * 200))
    ask(core, Configure(steps=[15], nodes=range(24)), seq=1)
    error = refused(core, encode_frame(Forward(np.zeros((1, 16), np.int16)), seq=7, trial_id=42))
    assert error.code == ErrorCode.HARDWARE_FAULT and len(error.text.encode()) in (127, 128)


def test_an_idle_park_refuses_forward_until_configure():
    core, ring = make()
    ask(core, Configure(steps=[15], nodes=range(24)), seq=1)
    core.idle_park()
    assert core.parked and ring.parks == 2
    assert ask(core, Forward(codes(np.random.default_rng(0), 1, 16)), seq=2).message.code == ErrorCode.PARKED


# --- the byte stream --------------------------------------------------------------

def session_stream() -> bytes:
    u = codes(np.random.default_rng(1), 2, 16)
    requests = [
        (HelloRequest(), 100), (Configure(steps=[3, 15], nodes=[0, 4, 9], bits=12, settle=2), 101),
        (Ping(0xDEADBEEF), 102), (Forward(u), 103), (Forward(u), 103), (Safe(), 104), (Forward(u), 105),
    ]
    return b"\x00" + b"".join(encode_frame(m, seq=s, trial_id=s * 3) for m, s in requests)


def test_requests_split_at_every_boundary_get_the_same_replies():
    stream = session_stream()
    core, whole_ring = make()
    whole = core.feed(stream)
    found = FrameDecoder().feed(b"".join(whole))
    assert [type(f.message).__name__ for f in found] == [
        "HelloReply", "ConfigureAck", "Pong", "Result", "Result", "SafeAck", "ErrorReply"]
    assert found[3] == found[4] and found[6].message.code == ErrorCode.PARKED
    for cut in range(len(stream) + 1):
        core, ring = make()
        assert core.feed(stream[:cut]) + core.feed(stream[cut:]) == whole
        assert ring.drives == whole_ring.drives
    core, _ = make()
    assert [r for i in range(len(stream)) for r in core.feed(stream[i:i + 1])] == whole


# --- the MicroPython subset -------------------------------------------------------

def test_the_core_stays_in_the_micropython_subset():
    tree = ast.parse((FIRMWARE / "pgt_core.py").read_text())
    for node in ast.walk(tree):
        assert not isinstance(node, (ast.JoinedStr, ast.NamedExpr, ast.AnnAssign)), ast.dump(node)
        if isinstance(node, ast.FunctionDef):
            assert node.returns is None and not any(a.annotation for a in node.args.args)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            assert set(names) <= {"struct", "ustruct"}, names
