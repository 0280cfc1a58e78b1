"""Frames of the host <-> microcontroller protocol, sans I/O: bytes in, frames out.

A frame on the wire is ``COBS(header + payload + CRC-16) + 0x00`` (docs/protocol.md).
``encode_frame`` and ``decode_frame`` are pure functions on bytes; ``FrameDecoder``
takes bytes as they arrive, in any split, and hands back every frame and every fault
it found without ever raising. The transport only moves bytes; the messages and their
payloads live in ``_messages``; the quantization of the numbers they carry is here.
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass

import numpy as np
from cobs import cobs

from ._messages import FORWARD_HEAD, INPUT_CODE_MAX, MESSAGE_CLASSES, ErrorCode, Message, MsgType

PROTOCOL_VERSION = 1
HEADER = struct.Struct("<BBHIH")   # version, type, seq, trial id, payload length
CRC_SIZE = 2
MAX_PAYLOAD = 0xFFFF
MIN_FRAME = HEADER.size + CRC_SIZE                  # before COBS
MAX_FRAME = HEADER.size + MAX_PAYLOAD + CRC_SIZE    # before COBS
MAX_ENCODED_FRAME = MAX_FRAME + MAX_FRAME // 254 + 1  # COBS worst case, no delimiter
CRC_INIT = 0xFFFF   # CRC-16/CCITT-FALSE: poly 0x1021, no reflection, no final xor
DELIMITER = b"\x00"


class ProtocolError(Exception):
    """Bytes from the peer that do not form a valid frame or message.

    ``seq`` and ``trial_id`` are the offending frame's (bytes 2-7) when it passed the
    CRC, so a device can answer with an ERROR to the right request, else None.
    ``msg_type`` is its type byte once its version is 1, else None.
    """

    def __init__(self, message: str, *, seq: int | None = None, trial_id: int | None = None,
                 msg_type: int | None = None):
        super().__init__(message)
        self.seq = seq
        self.trial_id = trial_id
        self.msg_type = msg_type


class FrameError(ProtocolError):
    """Not a frame: bad COBS, too short, too long, or a length field that disagrees."""


class CrcError(ProtocolError):
    """The CRC-16 does not match: the frame was corrupted in transit."""


class VersionError(ProtocolError):
    """A well-formed frame of a protocol version this codec does not speak."""


class UnknownMessageError(ProtocolError):
    """A well-formed frame whose message type this protocol version does not define."""


class PayloadError(ProtocolError):
    """A known message type whose payload breaks its layout or value ranges.

    ``code`` is the ERROR a device answers it with: BAD_PAYLOAD, or BAD_CONFIG for a
    CONFIGURE whose bits are not 8, 12 or 16 (docs/protocol.md §3.2).
    """

    def __init__(self, message: str, *, code: ErrorCode = ErrorCode.BAD_PAYLOAD, **header):
        super().__init__(message, **header)
        self.code = code


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (check value of b"123456789": 0x29B1)."""
    return binascii.crc_hqx(data, CRC_INIT)


@dataclass(frozen=True)
class Frame:
    """A decoded frame: the message and the header fields that route it."""

    seq: int        # u16; a reply carries its request's; a retry reuses it
    trial_id: int   # u32; the host's identity of the work item, echoed in the reply
    message: Message


def encode_frame(message: Message, *, seq: int, trial_id: int = 0) -> bytes:
    """The bytes that carry ``message`` on the wire, delimiter included.

    Raises ValueError when seq or trial_id is out of range or the payload is too long.
    """
    payload = message.to_payload()
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"{message.TYPE.name} payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    if not (0 <= seq <= 0xFFFF and 0 <= trial_id <= 0xFFFFFFFF):
        raise ValueError(f"seq {seq} or trial_id {trial_id} out of range (u16, u32)")
    body = HEADER.pack(PROTOCOL_VERSION, message.TYPE, seq, trial_id, len(payload)) + payload
    return cobs.encode(body + crc16(body).to_bytes(CRC_SIZE, "little")) + DELIMITER


def decode_frame(data: bytes) -> Frame:
    """The frame in ``data``: one COBS-encoded frame, with or without its 0x00.

    Checks run in wire order and raise the first fault found: FrameError (bad COBS,
    too short or too long), CrcError, VersionError (the version byte
    and the trailing CRC are the only layout every version keeps), FrameError (length
    field), UnknownMessageError, PayloadError. The last four carry the frame's seq
    and trial_id, so a device can answer them with an ERROR.
    """
    data = bytes(data).removesuffix(DELIMITER)
    if len(data) > MAX_ENCODED_FRAME:
        raise FrameError(f"frame of {len(data)} encoded bytes exceeds {MAX_ENCODED_FRAME}")
    try:
        raw = cobs.decode(data)
    except cobs.DecodeError as exc:
        raise FrameError(f"invalid COBS encoding: {exc}") from None
    if len(raw) < MIN_FRAME:
        raise FrameError(f"frame of {len(raw)} bytes is shorter than the minimum {MIN_FRAME}")
    body, crc = raw[:-CRC_SIZE], int.from_bytes(raw[-CRC_SIZE:], "little")
    if crc16(body) != crc:
        raise CrcError(f"CRC mismatch: frame carries 0x{crc:04x}, bytes give 0x{crc16(body):04x}")
    version, msg_type, seq, trial_id, length = HEADER.unpack_from(body)
    if version != PROTOCOL_VERSION:   # bytes 2-7 are still copied into the BAD_VERSION reply
        raise VersionError(f"frame has protocol version {version}, this codec speaks {PROTOCOL_VERSION}",
                           seq=seq, trial_id=trial_id)
    header = {"seq": seq, "trial_id": trial_id, "msg_type": msg_type}
    payload = body[HEADER.size:]
    if length != len(payload):
        raise FrameError(f"length field says {length} payload bytes, frame carries {len(payload)}",
                         **header)
    return Frame(seq, trial_id, _decode_message(msg_type, payload, header))


def _decode_message(msg_type: int, payload: bytes, header: dict) -> Message:
    try:
        cls = MESSAGE_CLASSES[MsgType(msg_type)]
    except ValueError:
        raise UnknownMessageError(f"unknown message type 0x{msg_type:02x}", **header) from None
    try:
        return cls.from_payload(payload)
    except (ValueError, struct.error) as exc:
        code = getattr(exc, "code", ErrorCode.BAD_PAYLOAD)
        raise PayloadError(f"{cls.TYPE.name} payload: {exc}", code=code, **header) from None


def replay_key(data: bytes) -> bytes | None:
    """The replay-cache key of one encoded frame (protocol §4): its type, seq, trial_id
    and CRC, as bytes; None when the frame fails checks 1-3 of §1.2 (never answered)."""
    data = bytes(data).removesuffix(DELIMITER)
    if len(data) > MAX_ENCODED_FRAME:
        return None
    try:
        raw = cobs.decode(data)
    except cobs.DecodeError:
        return None
    if len(raw) < MIN_FRAME or crc16(raw[:-CRC_SIZE]) != int.from_bytes(raw[-CRC_SIZE:], "little"):
        return None
    return raw[1:8] + raw[-CRC_SIZE:]


def encoded_size(payload_size: int) -> int:
    """The most bytes a frame with ``payload_size`` payload bytes takes on the wire
    (COBS worst case and the delimiter): the E(P) of protocol §4."""
    raw = MIN_FRAME + payload_size
    return raw + raw // 254 + 1 + len(DELIMITER)


def batch_limit(n_inputs: int, n_features: int, bits: int) -> int:
    """The largest batch whose FORWARD and RESULT payloads both fit MAX_PAYLOAD.

    The device's own limit (HELLO reply ``max_batch``) applies on top of this one.
    """
    return min(forward_batch_limit(n_inputs), (MAX_PAYLOAD - 9) * 8 // (n_features * bits), 0xFFFF)


def forward_batch_limit(n_inputs: int) -> int:
    """The most samples of ``n_inputs`` codes one FORWARD payload can carry (0 if none).

    A device announces a max_batch no larger (protocol §3.1).
    """
    return min((MAX_PAYLOAD - FORWARD_HEAD) // (2 * n_inputs), 0xFFFF)


class FrameDecoder:
    """Splits a byte stream into frames; never raises on what the peer sends.

    ``feed`` takes bytes split or merged at any boundary and returns, in stream
    order, a Frame for each valid frame and a ProtocolError for each invalid one.
    Garbage ends at the next 0x00, where decoding resynchronises; empty frames
    (consecutive 0x00) are ignored. A run of more than ``max_frame`` bytes without
    a delimiter is reported once as a FrameError and dropped up to the next 0x00,
    so memory stays bounded by ``max_frame``.
    """

    def __init__(self, max_frame: int = MAX_ENCODED_FRAME):
        self._max_frame = max_frame
        self._buffer = bytearray()
        self._overflowed = False   # dropping bytes until the next delimiter

    def feed(self, data: bytes) -> list[Frame | ProtocolError]:
        return [self._decode(item) if isinstance(item, bytes) else item for item in self.split(data)]

    def split(self, data: bytes) -> list[bytes | FrameError]:
        """As ``feed``, but each complete frame still COBS-encoded (without its 0x00)."""
        data = bytes(data)
        found: list[bytes | FrameError] = []
        start = 0
        while (end := data.find(DELIMITER, start)) >= 0:
            self._append(data[start:end], found)
            if self._buffer:
                found.append(bytes(self._buffer))
            self._buffer.clear()
            self._overflowed = False
            start = end + 1
        self._append(data[start:], found)
        return found

    def _append(self, chunk: bytes, found: list) -> None:
        if self._overflowed:
            return
        if len(self._buffer) + len(chunk) > self._max_frame:
            found.append(FrameError(f"no delimiter within {self._max_frame} bytes; "
                                    "dropping bytes up to the next 0x00"))
            self._buffer.clear()
            self._overflowed = True
        else:
            self._buffer += chunk

    @staticmethod
    def _decode(data: bytes) -> Frame | ProtocolError:
        try:
            return decode_frame(data)
        except ProtocolError as exc:
            return exc


def quantize_inputs(u: np.ndarray) -> np.ndarray:
    """int16 codes ``rint(32767 * clip(u, -1, 1))``, ties to even.

    For |u| <= 1 the error |u - code / 32767| is at most 1 / 65534 (about 1.5e-5);
    values outside [-1, 1] saturate. Raises ValueError on NaN or infinity.
    """
    u = np.asarray(u, dtype=np.float64)
    if not np.all(np.isfinite(u)):
        raise ValueError("inputs must be finite")
    return np.rint(np.clip(u, -1.0, 1.0) * INPUT_CODE_MAX).astype(np.int16)


def dequantize_inputs(codes: np.ndarray) -> np.ndarray:
    """The inputs that ``codes`` stand for: ``code / 32767`` as float64."""
    return np.asarray(codes, dtype=np.float64) / INPUT_CODE_MAX


def quantize_features(f: np.ndarray, bits: int, scale: float) -> np.ndarray:
    """uint16 codes ``rint((2**bits - 1) * clip(f / scale, 0, 1))``, ties to even.

    ``scale`` is rounded to float32 first, as it travels. For 0 <= f <= scale the
    error |f - dequantized| is at most scale / (2 * (2**bits - 1)); values outside
    saturate. Raises ValueError for bad bits, a scale that is not finite and > 0,
    or non-finite features.
    """
    if bits not in (8, 12, 16):
        raise ValueError(f"bits {bits} not one of (8, 12, 16)")
    with np.errstate(over="ignore"):   # too large for float32 becomes inf: refused
        scale32 = float(np.float32(scale))
    if not (np.isfinite(scale32) and scale32 > 0):
        raise ValueError(f"scale {scale} is not a finite float32 > 0")
    f = np.asarray(f, dtype=np.float64)
    if not np.all(np.isfinite(f)):
        raise ValueError("features must be finite")
    full = (1 << bits) - 1
    return np.rint(np.clip(f / scale32, 0.0, 1.0) * full).astype(np.uint16)


def dequantize_features(codes: np.ndarray, bits: int, scale: float) -> np.ndarray:
    """The features that ``codes`` stand for: ``code * scale / (2**bits - 1)``, float64."""
    full = (1 << bits) - 1
    return np.asarray(codes, dtype=np.float64) * float(np.float32(scale)) / full
