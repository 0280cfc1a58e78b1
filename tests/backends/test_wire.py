"""The wire codec, on bytes: golden frames, the documented example, errors, fuzzing.

The golden frames were computed once by an independent implementation (a bitwise
CRC-16/CCITT-FALSE, a hand-written COBS encoder and byte layouts typed from
docs/protocol.md), not by this codec.
"""

from __future__ import annotations

import binascii
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from cobs import cobs
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pgt.backends._messages import (
    Configure,
    ConfigureAck,
    ErrorCode,
    ErrorReply,
    Forward,
    HelloReply,
    HelloRequest,
    Ping,
    Pong,
    ResetCause,
    Result,
    Safe,
    SafeAck,
)
from pgt.backends._wire import (
    MAX_ENCODED_FRAME,
    MAX_PAYLOAD,
    CrcError,
    Frame,
    FrameDecoder,
    FrameError,
    PayloadError,
    ProtocolError,
    UnknownMessageError,
    VersionError,
    batch_limit,
    crc16,
    decode_frame,
    dequantize_features,
    dequantize_inputs,
    encode_frame,
    quantize_features,
    quantize_inputs,
)

DOC = Path(__file__).parents[2] / "docs" / "protocol.md"
FUZZ = settings(max_examples=60, deadline=None)

# Every frame has seq 7 and trial_id 42.
GOLDEN = [
    (HelloRequest(), "04010107022a01010101034d1100"),
    (HelloReply(1, "ring-fw 0.3", n_inputs=16, n_nodes=24, n_features=24, max_batch=64,
                reset_cause=ResetCause.WATCHDOG),
     "04018107022a01010215040102100218021802400e72696e672d667720302e3388cb00"),
    (Configure(steps=[15], nodes=range(24), bits=12, settle=3),
     "04010207022a0101020c030c0302020203010780ffffffb25c00"),
    (ConfigureAck(steps=[15], nodes=range(24), bits=12, settle=3),
     "04018207022a0101020c030c0302020203010780ffffff5e6a00"),
    (Forward(np.array([[16384, -32767]])), "04010307022a01010208020102020106400180895500"),
    (Result(np.array([[1, 4095, 2048]]), bits=12, scale=2.5),
     "04018307022a0101020e0201020301010720400c01f0ff0408858c00"),
    (Result(np.array([[0], [255]]), bits=8, scale=1.0),
     "04018307022a0101020b02020201010104803f0804ff219400"),
    (Result(np.array([[1, 65535]]), bits=16, scale=0.5),
     "04018307022a0101020d02010202010101043f100105ffff0e8800"),
    (Ping(0xDEADBEEF), "04010407022a0101020407efbeaddeeb8000"),
    (Pong(0xDEADBEEF), "04018407022a0101020407efbeadde4b3500"),
    (Safe(), "04010507022a0101010103a28d00"),
    (SafeAck(), "04018507022a0101010103103200"),
    (ErrorReply(ErrorCode.PARKED, "parked"), "0401ff07022a010102070a077061726b6564b4d900"),
]
V2_PING = "04020407022a010102040201010103978f00"   # a valid frame of protocol version 2


def raw_frame(msg_type: int, payload: bytes, *, version: int = 1, length: int | None = None) -> bytes:
    """A frame with any header, built by hand so it can break the rules."""
    length = len(payload) if length is None else length
    body = struct.pack("<BBHIH", version, msg_type, 7, 42, length) + payload
    return cobs.encode(body + struct.pack("<H", binascii.crc_hqx(body, 0xFFFF))) + b"\x00"


# --- golden frames and the documented example -------------------------------------

@pytest.mark.parametrize(("message", "wire"), GOLDEN, ids=lambda v: type(v).__name__)
def test_encoder_writes_the_golden_frame(message, wire):
    assert encode_frame(message, seq=7, trial_id=42).hex() == wire


@pytest.mark.parametrize(("message", "wire"), GOLDEN, ids=lambda v: type(v).__name__)
def test_decoder_reads_the_golden_frame(message, wire):
    assert decode_frame(bytes.fromhex(wire)) == Frame(7, 42, message)


def doc_hex_blocks() -> list[bytes]:
    example = DOC.read_text().split("## 9. Worked example")[1]
    lines = re.findall(r"^    ((?:[0-9a-f]{2} )*[0-9a-f]{2})$", example, re.MULTILINE)
    return [bytes.fromhex(line) for line in lines]


def test_worked_example_in_the_doc_matches_byte_for_byte():
    decoded, wire, result = doc_hex_blocks()
    forward = Forward(quantize_inputs(np.array([[0.5, -1.0]])))
    assert forward.codes.tolist() == [[16384, -32767]]
    assert encode_frame(forward, seq=7, trial_id=42) == wire
    assert cobs.decode(wire[:-1]) == decoded
    assert decode_frame(result) == Frame(7, 42, Result(np.array([[1, 4095, 2048]]), 12, 2.5))


def test_crc_is_ccitt_false():
    assert crc16(b"123456789") == 0x29B1


# --- errors -----------------------------------------------------------------------

@pytest.mark.parametrize(("wire", "error", "words"), [
    (b"\x05\x01\x00", FrameError, "COBS"),
    (cobs.encode(b"\x01\x02\x03") + b"\x00", FrameError, "shorter than the minimum 12"),
    (b"\x01" * (MAX_ENCODED_FRAME + 1), FrameError, "exceeds"),
    (raw_frame(0x04, b"\x01\x00\x00\x00", length=5), FrameError, "length field says 5"),
    (bytes.fromhex(V2_PING), VersionError, "version 2, this codec speaks 1"),
    (raw_frame(0x42, b""), UnknownMessageError, "0x42"),
    (raw_frame(0x01, b"\x00"), PayloadError, "HELLO payload: expected 0 bytes"),
    (raw_frame(0x03, struct.pack("<HHh", 1, 1, -32768)), PayloadError, "outside [-32767, 32767]"),
    (raw_frame(0x03, struct.pack("<HHh", 1, 2, 0)), PayloadError, "expected 8 bytes, got 6"),
    (raw_frame(0x03, struct.pack("<HH", 0, 2)), PayloadError, "batch 0 outside [1, 65535]"),
    (raw_frame(0x83, struct.pack("<HHfB", 1, 1, 1.0, 10) + b"\x00\x00"), PayloadError, "bits 10"),
    (raw_frame(0x83, struct.pack("<HHfB", 1, 1, float("nan"), 8) + b"\x00"), PayloadError, "scale"),
    (raw_frame(0x81, struct.pack("<BBHHHH", 1, 9, 1, 1, 1, 1)), PayloadError, "ResetCause"),
    (raw_frame(0x81, struct.pack("<BBHHHH", 1, 0, 1, 1, 1, 1) + b"\xff"), PayloadError, "utf-8"),
    (raw_frame(0x02, struct.pack("<BHHH", 12, 0, 1, 1) + b"\x00\x01"), PayloadError, "steps is empty"),
    (raw_frame(0xFF, b"\x63"), PayloadError, "ErrorCode"),
])
def test_each_fault_raises_its_own_error_with_a_one_line_message(wire, error, words):
    with pytest.raises(error, match=re.escape(words)) as info:
        decode_frame(wire)
    assert "\n" not in str(info.value)


def test_a_flipped_bit_is_a_crc_error():
    wire = bytearray(bytes.fromhex(GOLDEN[8][1]))
    wire[12] ^= 0x10   # a data byte of the nonce, not a COBS code byte
    with pytest.raises(CrcError, match="CRC mismatch"):
        decode_frame(bytes(wire))


def test_errors_after_the_crc_name_the_request_they_belong_to():
    with pytest.raises(PayloadError) as info:
        decode_frame(raw_frame(0x04, b"\x01"))
    assert (info.value.seq, info.value.trial_id) == (7, 42)


@pytest.mark.parametrize("build", [
    lambda: encode_frame(Ping(1), seq=0x10000),
    lambda: encode_frame(Ping(1), seq=0, trial_id=-1),
    lambda: encode_frame(Forward(np.zeros((1, 32766), np.int16)), seq=0),
    lambda: Ping(2**32),
    lambda: Forward(np.zeros((2, 2))),
    lambda: Forward(np.zeros(3, np.int16)),
    lambda: Result(np.array([[256]]), bits=8, scale=1.0),
    lambda: Result(np.array([[1]]), bits=8, scale=-1.0),
    lambda: Result(np.array([[1]]), bits=8, scale=0.0),
    lambda: Result(np.array([[1]]), bits=8, scale=1e39),
    lambda: quantize_features(np.array([1.0]), 8, 1e39),
    lambda: quantize_features(np.array([1.0]), 8, 0.0),
    lambda: quantize_features(np.array([np.inf]), 8, 1.0),
    lambda: quantize_features(np.array([1.0]), 10, 1.0),
    lambda: Configure(steps=[], nodes=[0]),
    lambda: Configure(steps=[0], nodes=[0], bits=10),
    lambda: HelloReply(1, "x" * 65, 1, 1, 1, 1),
    lambda: HelloReply(1, "", 2, 2, 5, 1),
    lambda: ErrorReply(ErrorCode.BAD_CONFIG, "é" * 65),
])
def test_building_an_invalid_message_is_a_value_error(build):
    with pytest.raises(ValueError):
        build()


# --- quantization -----------------------------------------------------------------

def test_input_quantization_error_is_at_most_half_a_step():
    u = np.random.default_rng(0).uniform(-1, 1, 10_000)
    codes = quantize_inputs(u)
    assert codes.dtype == np.int16
    assert np.max(np.abs(dequantize_inputs(codes) - u)) <= 1 / 65534


def test_inputs_saturate_and_ties_round_to_even():
    codes = quantize_inputs(np.array([-3.0, -1.0, 0.5, 1.0, 7.0, 1.5 / 32767]))
    assert codes.tolist() == [-32767, -32767, 16384, 32767, 32767, 2]
    with pytest.raises(ValueError, match="finite"):
        quantize_inputs(np.array([np.nan]))


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_feature_quantization_error_is_at_most_half_a_step(bits):
    scale = 0.7
    f = np.random.default_rng(bits).uniform(0, scale, 10_000)
    codes = quantize_features(f, bits, scale)
    full = 2**bits - 1
    assert codes.max() <= full
    bound = float(np.float32(scale)) / (2 * full) + 1e-12
    assert np.max(np.abs(dequantize_features(codes, bits, scale) - f)) <= bound
    assert quantize_features(np.array([-1.0, 2.0]), bits, scale).tolist() == [0, full]


def test_features_survive_a_result_round_trip():
    codes = quantize_features(np.linspace(0, 3, 12).reshape(3, 4), 12, 3.0)
    back = decode_frame(encode_frame(Result(codes, 12, 3.0), seq=1)).message
    assert np.array_equal(back.codes, codes)


@pytest.mark.parametrize(("n_inputs", "n_features", "bits"), [(16, 24, 12), (1, 1, 8), (300, 5000, 16)])
def test_batch_limit_is_the_largest_batch_that_fits(n_inputs, n_features, bits):
    b = batch_limit(n_inputs, n_features, bits)
    assert 4 + 2 * b * n_inputs <= MAX_PAYLOAD and 9 + (b * n_features * bits + 7) // 8 <= MAX_PAYLOAD
    assert b == 0xFFFF or (4 + 2 * (b + 1) * n_inputs > MAX_PAYLOAD
                           or 9 + ((b + 1) * n_features * bits + 7) // 8 > MAX_PAYLOAD)


# --- the streaming decoder --------------------------------------------------------

STREAM = b"".join(bytes.fromhex(wire) for _, wire in GOLDEN)
FRAMES = [Frame(7, 42, message) for message, _ in GOLDEN]


def test_frames_split_at_every_boundary_are_all_recovered():
    for cut in range(len(STREAM) + 1):
        decoder = FrameDecoder()
        assert decoder.feed(STREAM[:cut]) + decoder.feed(STREAM[cut:]) == FRAMES


def test_frames_fed_byte_by_byte_are_all_recovered():
    decoder = FrameDecoder()
    found = [item for i in range(len(STREAM)) for item in decoder.feed(STREAM[i:i + 1])]
    assert found == FRAMES


def test_garbage_is_reported_and_the_stream_resynchronises():
    found = FrameDecoder().feed(b"\x00\x00noise\x00" + bytes.fromhex(GOLDEN[8][1]))
    assert isinstance(found[0], FrameError)
    assert found[1:] == [FRAMES[8]]


def test_a_run_without_delimiter_is_reported_once_and_memory_stays_bounded():
    decoder = FrameDecoder(max_frame=64)
    found = []
    for _ in range(100):
        found += decoder.feed(b"\x01" * 50)
        assert len(decoder._buffer) <= 64
    assert len(found) == 1 and "no delimiter within 64 bytes" in str(found[0])
    assert decoder.feed(b"tail\x00" + bytes.fromhex(GOLDEN[8][1])) == [FRAMES[8]]


# --- fuzzing ----------------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=300))
def test_garbage_raises_nothing_but_protocol_errors(data):
    try:
        decode_frame(data)
    except ProtocolError:
        pass
    found = FrameDecoder(max_frame=128).feed(data)
    assert all(isinstance(item, (Frame, ProtocolError)) for item in found)


@FUZZ
@given(st.integers(0, 255), st.binary(max_size=60))
def test_random_payloads_behind_a_valid_crc_raise_nothing_but_protocol_errors(msg_type, payload):
    try:
        assert isinstance(decode_frame(raw_frame(msg_type, payload)), Frame)
    except ProtocolError:
        pass


@FUZZ
@given(st.binary(max_size=40).map(lambda b: b + b"\x00"))
def test_garbage_ending_in_a_delimiter_decodes_only_valid_frames(data):
    decoder = FrameDecoder()
    assert decoder.feed(data + STREAM)[-len(FRAMES):] == FRAMES


u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
indices = st.lists(st.integers(0, 40), min_size=1, max_size=8)
text = st.text(max_size=20)
code_shape = hnp.array_shapes(min_dims=2, max_dims=2, max_side=5)


@st.composite
def results(draw):
    bits = draw(st.sampled_from([8, 12, 16]))
    codes = draw(hnp.arrays(np.uint16, code_shape, elements=st.integers(0, 2**bits - 1)))
    scale = draw(st.floats(0, 1e6, width=32, exclude_min=True))   # §3.4: scale > 0
    return Result(codes, bits, scale)


@st.composite
def hello_replies(draw):
    n_inputs, n_nodes = draw(st.integers(1, 100)), draw(st.integers(1, 100))
    return HelloReply(draw(st.integers(1, 255)), draw(text), n_inputs, n_nodes,
                      draw(st.integers(1, n_inputs * n_nodes)), draw(st.integers(1, 0xFFFF)),
                      draw(st.sampled_from(ResetCause)))


MESSAGES = st.one_of(
    st.builds(HelloRequest), st.builds(Safe), st.builds(SafeAck),
    st.builds(Ping, u32), st.builds(Pong, u32),
    st.builds(ErrorReply, st.sampled_from(ErrorCode), text),
    hello_replies(),
    st.builds(Configure, indices, indices, st.sampled_from([8, 12, 16]), u16),
    st.builds(ConfigureAck, indices, indices, st.sampled_from([8, 12, 16]), u16),
    st.builds(Forward, hnp.arrays(np.int16, code_shape, elements=st.integers(-32767, 32767))),
    results(),
)
FRAME_STRATEGY = st.builds(Frame, u16, u32, MESSAGES)


@FUZZ
@given(FRAME_STRATEGY)
def test_random_messages_round_trip(frame):
    wire = encode_frame(frame.message, seq=frame.seq, trial_id=frame.trial_id)
    assert wire.count(0) == 1 and wire.endswith(b"\x00")
    assert decode_frame(wire) == frame
    assert type(frame.message).from_payload(frame.message.to_payload()) == frame.message


@FUZZ
@given(st.lists(st.tuples(FRAME_STRATEGY, st.binary(max_size=20)), min_size=1, max_size=5),
       st.lists(st.integers(0, 10_000), max_size=8))
def test_frames_among_garbage_split_anywhere_are_all_recovered(pairs, cuts):
    # Garbage before a frame is closed by a delimiter, so the frame starts a new chunk.
    stream = b"".join(garbage + b"\x00" + encode_frame(f.message, seq=f.seq, trial_id=f.trial_id)
                      for f, garbage in pairs)
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    decoder = FrameDecoder()
    found = [item for a, b in zip(bounds, bounds[1:]) for item in decoder.feed(stream[a:b])]
    frames = iter(item for item in found if isinstance(item, Frame))
    assert all(any(got == f for got in frames) for f, _ in pairs)   # in order
    assert all(isinstance(item, (Frame, ProtocolError)) for item in found)
