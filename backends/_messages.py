"""Messages of the host <-> microcontroller protocol: types, codes, payload layouts.

docs/protocol.md is the specification; the byte tables there are the struct formats
here. Building a message or parsing a payload that breaks the specification raises
ValueError naming the fault; ``_wire.decode_frame`` reports the latter as the
codec's PayloadError. Nothing here does I/O.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np

FIRMWARE_ID_MAX = 64      # bytes of UTF-8 in a HELLO reply
ERROR_TEXT_MAX = 128      # bytes of UTF-8 in an ERROR reply
INPUT_CODE_MAX = 32767    # inputs in [-1, 1] travel as codes in [-32767, 32767]
FEATURE_BITS = (8, 12, 16)
_U16 = 0xFFFF
FORWARD_HEAD = 4          # bytes of a FORWARD payload before its codes: B, n
RESULT_HEAD = 9           # bytes of a RESULT payload before its codes: B, F, scale, bits


class MsgType(enum.IntEnum):
    """The message type byte. Replies are their request's type with bit 7 set."""

    HELLO = 0x01
    CONFIGURE = 0x02
    FORWARD = 0x03
    PING = 0x04
    SAFE = 0x05
    HELLO_REPLY = 0x81
    CONFIGURE_ACK = 0x82
    RESULT = 0x83
    PONG = 0x84
    SAFE_ACK = 0x85
    ERROR = 0xFF


class ResetCause(enum.IntEnum):
    """Why the microcontroller last restarted, as its reset controller reports it."""

    UNKNOWN = 0
    POWER_ON = 1
    WATCHDOG = 2
    BROWNOUT = 3
    SOFTWARE = 4


class ErrorCode(enum.IntEnum):
    """Why the device refused a request (the code of an ERROR reply)."""

    BAD_VERSION = 1       # the request's protocol version is not the device's
    UNKNOWN_TYPE = 2      # the request's message type is not defined
    BAD_PAYLOAD = 3       # the request's payload breaks its layout
    BAD_CONFIG = 4        # CONFIGURE: bad bits, steps/nodes the ring lacks, or too big a RESULT
    BATCH_TOO_LARGE = 5   # FORWARD batch above the HELLO reply's max_batch
    SHAPE_MISMATCH = 6    # FORWARD n_inputs differs from the device's
    PARKED = 7            # FORWARD after SAFE, a reset or a fault, before a CONFIGURE
    HARDWARE_FAULT = 8    # the ring, DAC or ADC failed; the ring is parked


REQUEST_TYPES = frozenset({MsgType.HELLO, MsgType.CONFIGURE, MsgType.FORWARD, MsgType.PING,
                           MsgType.SAFE})   # all a device serves; anything else: UNKNOWN_TYPE


class BadConfig(ValueError):
    """A CONFIGURE value that fits the payload's table but no ring serves (bits not 8, 12, 16).

    A device answers it with ``code`` (BAD_CONFIG), not BAD_PAYLOAD (docs/protocol.md §3.2).
    """

    code = ErrorCode.BAD_CONFIG


def forward_payload_size(batch: int, n_inputs: int) -> int:
    """Bytes of the payload of a FORWARD of ``batch`` samples of ``n_inputs`` codes."""
    return FORWARD_HEAD + 2 * batch * n_inputs


def result_payload_size(batch: int, n_features: int, bits: int) -> int:
    """Bytes of the payload of a RESULT of ``batch`` samples of ``n_features`` codes."""
    return RESULT_HEAD + (batch * n_features * bits + 7) // 8


def _check(name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise ValueError(f"{name} {value} outside [{lo}, {hi}]")


def _expect_len(payload: bytes, n: int) -> None:
    if len(payload) != n:
        raise ValueError(f"expected {n} bytes, got {len(payload)}")


def _expect_at_least(payload: bytes, n: int) -> None:
    if len(payload) < n:
        raise ValueError(f"expected at least {n} bytes, got {len(payload)}")


class _Message:
    """Base of all messages: ``from_payload(m.to_payload()) == m`` for every message."""

    TYPE: ClassVar[MsgType]

    def to_payload(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        """The message in ``payload``; raises ValueError naming what breaks its table."""
        raise NotImplementedError


@dataclass(frozen=True)
class _Empty(_Message):
    def to_payload(self) -> bytes:
        return b""

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        _expect_len(payload, 0)
        return cls()


@dataclass(frozen=True)
class HelloRequest(_Empty):
    """Host -> device: who are you? (empty payload)."""

    TYPE: ClassVar[MsgType] = MsgType.HELLO


@dataclass(frozen=True)
class Safe(_Empty):
    """Host -> device: park the ring (zero drive) until the next CONFIGURE."""

    TYPE: ClassVar[MsgType] = MsgType.SAFE


@dataclass(frozen=True)
class SafeAck(_Empty):
    """Device -> host: the ring is parked."""

    TYPE: ClassVar[MsgType] = MsgType.SAFE_ACK


_HELLO = struct.Struct("<BBHHHH")


@dataclass(frozen=True)
class HelloReply(_Message):
    """Device -> host: identity, sizes and the cause of the last reset."""

    TYPE: ClassVar[MsgType] = MsgType.HELLO_REPLY
    protocol_version: int   # the highest protocol version the firmware speaks
    firmware_id: str        # free text, at most 64 bytes of UTF-8
    n_inputs: int           # input steps per sample (= length of an input vector)
    n_nodes: int            # virtual nodes per round trip
    n_features: int         # features per sample under the current configuration
    max_batch: int          # most samples one FORWARD may carry
    reset_cause: ResetCause = ResetCause.UNKNOWN

    def __post_init__(self) -> None:
        object.__setattr__(self, "reset_cause", ResetCause(self.reset_cause))
        _check("protocol_version", self.protocol_version, 1, 0xFF)
        for name in ("n_inputs", "n_nodes", "max_batch"):
            _check(name, getattr(self, name), 1, _U16)
        _check("n_features", self.n_features, 1, min(_U16, self.n_inputs * self.n_nodes))
        _check("firmware_id bytes", len(self.firmware_id.encode()), 0, FIRMWARE_ID_MAX)

    def to_payload(self) -> bytes:
        head = _HELLO.pack(self.protocol_version, self.reset_cause, self.n_inputs,
                           self.n_nodes, self.n_features, self.max_batch)
        return head + self.firmware_id.encode()

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        _expect_at_least(payload, _HELLO.size)
        version, cause, n_inputs, n_nodes, n_features, max_batch = _HELLO.unpack_from(payload)
        firmware_id = payload[_HELLO.size:].decode()
        return cls(version, firmware_id, n_inputs, n_nodes, n_features, max_batch, cause)


@dataclass(frozen=True)
class _Nonce(_Message):
    nonce: int   # u32, echoed unchanged

    def __post_init__(self) -> None:
        _check("nonce", self.nonce, 0, 0xFFFFFFFF)

    def to_payload(self) -> bytes:
        return struct.pack("<I", self.nonce)

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        _expect_len(payload, 4)
        return cls(*struct.unpack("<I", payload))


@dataclass(frozen=True)
class Pong(_Nonce):
    """Device -> host: the PING's nonce, echoed."""

    TYPE: ClassVar[MsgType] = MsgType.PONG


@dataclass(frozen=True)
class Ping(_Nonce):
    """Host -> device: are you there? The device answers PONG with the same nonce."""

    TYPE: ClassVar[MsgType] = MsgType.PING

    def pong(self) -> Pong:
        return Pong(self.nonce)


@dataclass(frozen=True)
class ErrorReply(_Message):
    """Device -> host: the request was refused; ``text`` is for people, not programs."""

    TYPE: ClassVar[MsgType] = MsgType.ERROR
    code: ErrorCode
    text: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", ErrorCode(self.code))
        _check("text bytes", len(self.text.encode()), 0, ERROR_TEXT_MAX)

    def to_payload(self) -> bytes:
        return bytes([self.code]) + self.text.encode()

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        _expect_at_least(payload, 1)
        return cls(payload[0], payload[1:].decode())


_SAMPLING = struct.Struct("<BHHH")
_INDEX_MAX = _U16 - 1   # n_inputs and n_nodes are u16, so indices stop one below


def _to_mask(indices: tuple[int, ...]) -> bytes:
    """Bit i (byte i // 8, bit i % 8, LSB first) set for each index; no zero tail."""
    mask = bytearray(indices[-1] // 8 + 1)
    for i in indices:
        mask[i // 8] |= 1 << (i % 8)
    return bytes(mask)


def _from_mask(mask: bytes) -> tuple[int, ...]:
    bits = np.unpackbits(np.frombuffer(mask, np.uint8), bitorder="little")
    return tuple(int(i) for i in np.flatnonzero(bits))


@dataclass(frozen=True)
class _Sampling(_Message):
    steps: tuple[int, ...]   # input steps whose round trip is sampled, ascending
    nodes: tuple[int, ...]   # virtual nodes sampled on those round trips, ascending
    bits: int = 16           # feature resolution: 8, 12 or 16
    settle: int = 0          # zero-drive round trips before each sample's first step

    def __post_init__(self) -> None:
        for name in ("steps", "nodes"):
            indices = tuple(sorted({int(i) for i in getattr(self, name)}))
            if not indices:
                raise ValueError(f"{name} is empty")
            _check(f"{name} index", indices[0], 0, _INDEX_MAX)
            _check(f"{name} index", indices[-1], 0, _INDEX_MAX)
            object.__setattr__(self, name, indices)
        if self.bits not in FEATURE_BITS:   # after the masks: the order of §3.2
            raise BadConfig(f"bits {self.bits} not one of {FEATURE_BITS}")
        _check("settle", self.settle, 0, _U16)

    @property
    def n_features(self) -> int:
        """Features per sample: every sampled node on every sampled step."""
        return len(self.steps) * len(self.nodes)

    def to_payload(self) -> bytes:
        steps, nodes = _to_mask(self.steps), _to_mask(self.nodes)
        return _SAMPLING.pack(self.bits, self.settle, len(steps), len(nodes)) + steps + nodes

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        _expect_at_least(payload, _SAMPLING.size)
        bits, settle, n_steps, n_nodes = _SAMPLING.unpack_from(payload)
        _expect_len(payload, _SAMPLING.size + n_steps + n_nodes)
        steps = payload[_SAMPLING.size:_SAMPLING.size + n_steps]
        nodes = payload[_SAMPLING.size + n_steps:]
        return cls(_from_mask(steps), _from_mask(nodes), bits, settle)


@dataclass(frozen=True)
class ConfigureAck(_Sampling):
    """Device -> host: the configuration now in force (an echo of the CONFIGURE)."""

    TYPE: ClassVar[MsgType] = MsgType.CONFIGURE_ACK


@dataclass(frozen=True)
class Configure(_Sampling):
    """Host -> device: what to sample, at what resolution, after how much settling.

    Features of one sample are ordered step-major: all sampled nodes of the first
    sampled step, then of the next. A valid CONFIGURE also unparks the ring.
    """

    TYPE: ClassVar[MsgType] = MsgType.CONFIGURE

    def ack(self) -> ConfigureAck:
        return ConfigureAck(self.steps, self.nodes, self.bits, self.settle)


def _as_codes(codes: object, lo: int, hi: int, dtype: str) -> np.ndarray:
    """A read-only (B, n) array of integer codes in [lo, hi], 1 <= B, n <= 65535."""
    array = np.asarray(codes)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"codes must be a 2-D integer array, got {array.ndim}-D {array.dtype}")
    for name, size in zip(("batch", "width"), array.shape):
        _check(name, size, 1, _U16)
    if array.min() < lo or array.max() > hi:
        raise ValueError(f"codes outside [{lo}, {hi}]")
    array = np.ascontiguousarray(array, dtype=dtype)
    array.setflags(write=False)
    return array


_FORWARD = struct.Struct("<HH")


@dataclass(frozen=True, eq=False)
class Forward(_Message):
    """Host -> device: drive the ring with B input vectors (quantize_inputs codes)."""

    TYPE: ClassVar[MsgType] = MsgType.FORWARD
    codes: np.ndarray   # int16 (B, n_inputs), each in [-32767, 32767], sample-major

    def __post_init__(self) -> None:
        object.__setattr__(self, "codes", _as_codes(self.codes, -INPUT_CODE_MAX, INPUT_CODE_MAX, "<i2"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Forward) and np.array_equal(self.codes, other.codes)

    def to_payload(self) -> bytes:
        return _FORWARD.pack(*self.codes.shape) + self.codes.tobytes()

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        _expect_at_least(payload, _FORWARD.size)
        batch, n_inputs = _FORWARD.unpack_from(payload)
        _expect_len(payload, _FORWARD.size + 2 * batch * n_inputs)
        codes = np.frombuffer(payload, "<i2", offset=_FORWARD.size)
        return cls(codes.reshape(batch, n_inputs))


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Codes as one little-endian bit stream, ``bits`` per code, zero-padded to a byte."""
    flat = codes.ravel()
    if bits == 8:
        return flat.astype(np.uint8).tobytes()
    if bits == 16:
        return flat.astype("<u2").tobytes()
    stream = (flat[:, None] >> np.arange(bits)) & 1
    return np.packbits(stream.astype(np.uint8).ravel(), bitorder="little").tobytes()


def unpack_codes(data: bytes, count: int, bits: int) -> np.ndarray:
    """The inverse of pack_codes: ``count`` codes as uint16; padding bits are ignored."""
    raw = np.frombuffer(data, np.uint8)
    if bits == 8:
        return raw[:count].astype(np.uint16)
    if bits == 16:
        return raw[: 2 * count].view("<u2").astype(np.uint16)
    stream = np.unpackbits(raw, bitorder="little")[: count * bits].reshape(count, bits)
    return (stream.astype(np.uint16) << np.arange(bits, dtype=np.uint16)).sum(axis=1, dtype=np.uint16)


_RESULT = struct.Struct("<HHfB")


@dataclass(frozen=True, eq=False)
class Result(_Message):
    """Device -> host: B feature vectors as codes; feature = code * scale / (2**bits - 1)."""

    TYPE: ClassVar[MsgType] = MsgType.RESULT
    codes: np.ndarray   # uint16 (B, n_features), each in [0, 2**bits - 1]
    bits: int           # 8, 12 or 16, as configured
    scale: float        # the feature value of the full-scale code, > 0; stored as float32

    def __post_init__(self) -> None:
        if self.bits not in FEATURE_BITS:
            raise ValueError(f"bits {self.bits} not one of {FEATURE_BITS}")
        with np.errstate(over="ignore"):   # too large for float32 becomes inf: refused
            scale = np.float32(self.scale)
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"scale {self.scale} is not a finite float32 > 0")
        object.__setattr__(self, "scale", float(scale))
        object.__setattr__(self, "codes", _as_codes(self.codes, 0, (1 << self.bits) - 1, "<u2"))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Result) and (self.bits, self.scale) == (other.bits, other.scale)
                and np.array_equal(self.codes, other.codes))

    def to_payload(self) -> bytes:
        head = _RESULT.pack(*self.codes.shape, self.scale, self.bits)
        return head + pack_codes(self.codes, self.bits)

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        _expect_at_least(payload, _RESULT.size)
        batch, n_features, scale, bits = _RESULT.unpack_from(payload)
        if bits not in FEATURE_BITS:
            raise ValueError(f"bits {bits} not one of {FEATURE_BITS}")
        count = batch * n_features
        _expect_len(payload, _RESULT.size + (count * bits + 7) // 8)
        codes = unpack_codes(payload[_RESULT.size:], count, bits)
        return cls(codes.reshape(batch, n_features), bits, scale)


Message = (HelloRequest | HelloReply | Configure | ConfigureAck | Forward | Result
           | Ping | Pong | Safe | SafeAck | ErrorReply)

MESSAGE_CLASSES: dict[MsgType, type[_Message]] = {
    cls.TYPE: cls for cls in (HelloRequest, HelloReply, Configure, ConfigureAck, Forward,
                              Result, Ping, Pong, Safe, SafeAck, ErrorReply)
}

