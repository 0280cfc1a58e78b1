"""The emulated microcontroller: the device side of the protocol, the simulated ring behind.

``EmulatedDevice`` is the firmware: it checks each request in the order of
docs/protocol.md §1.2, §3.2 and §3.3 (the same sans-IO codec as the host, plus the
device's own rules: a reply type sent to it is UNKNOWN_TYPE), keeps the
configuration, the parked state, the reset cause and the replay cache of §4 (every
reply is cached, ERROR included), and answers each request in order. FORWARD
dequantizes the codes, runs ``backends._sim.SimRing`` (so noise and drift are the
simulator's) over ``settle`` zero-drive round trips and then the sample's inputs,
samples the configured steps and nodes, and quantizes the features at the
configured resolution. ``serve(stream)`` runs one connection; the device's state
survives a connection (a host reconnecting over a UART or a new TCP connection
finds the same device) but not a reset or an unplug. Every fault injected is
recorded in ``injected`` (and handed to ``on_fault``). Serving over a pty, TCP or
memory is in ``_emulate``.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import trio

from pgt.backends._faults import FaultSpec, FaultyLink, InjectedFault
from pgt.backends._messages import (ERROR_TEXT_MAX, REQUEST_TYPES, Configure, ErrorCode, ErrorReply,
                                Forward, HelloReply, HelloRequest, Ping, ResetCause, Result, Safe,
                                SafeAck, result_payload_size)
from pgt.backends._sim import SimRing
from pgt.backends._wire import (MAX_PAYLOAD, Frame, FrameDecoder, FrameError, ProtocolError,
                            UnknownMessageError, VersionError, decode_frame, dequantize_inputs,
                            encode_frame, forward_batch_limit, quantize_features, replay_key)
from pgt.kernels import RingParams

__all__ = ["EmulatedDevice", "EmulatorConfig", "Unplugged"]

FIRMWARE_ID = "pgt-emulator/1"
INJECTED_KEPT = 100_000   # the most recent injected faults kept in ``injected``


class Unplugged(Exception):
    """The emulated cable was pulled: the connection ends, the device powers off."""


@dataclass(frozen=True)
class EmulatorConfig:
    """The emulated board: its ring, sizes, timing and faults.

    Raises ValueError when a FORWARD of ``max_batch`` samples would not fit a payload
    (protocol §3.1: HELLO never announces a max_batch the device must refuse) or the
    scale is not a finite float32 > 0 (§3.4).
    """

    ring: RingParams = field(default_factory=RingParams)
    n_inputs: int = 16
    max_batch: int = 64
    latency_s: float = 0.0        # firmware time per FORWARD, on top of the ring
    round_trip_s: float = 0.0     # ring time per round trip (settle and input steps)
    baud: float = 0.0             # link byte rate model (8N1); 0: unlimited
    scale: float = 2.0            # detector full scale: the feature of the top code
    seed: int = 0                 # seeds the ring's detector noise
    firmware_id: str = FIRMWARE_ID
    faults: FaultSpec = field(default_factory=FaultSpec)

    def __post_init__(self) -> None:
        limit = forward_batch_limit(self.n_inputs) if self.n_inputs >= 1 else 0
        if limit < 1:
            raise ValueError(f"emulator: {self.n_inputs} inputs per sample do not fit a FORWARD "
                             f"(1 to {forward_batch_limit(1) // 2})")
        if not 1 <= self.max_batch <= limit:
            raise ValueError(f"emulator: max_batch {self.max_batch} with {self.n_inputs} inputs: "
                             f"a FORWARD carries 1 to {limit} samples")
        with np.errstate(over="ignore"):
            scale = np.float32(self.scale)
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"emulator: scale {self.scale} is not a finite float32 > 0")


def _error(code: ErrorCode, text: str) -> ErrorReply:
    """An ERROR reply; ``text`` is cut to 128 bytes of whole UTF-8 characters."""
    return ErrorReply(code, text.encode()[:ERROR_TEXT_MAX].decode(errors="ignore"))


class EmulatedDevice:
    """One emulated microcontroller; ``serve`` it on any number of successive links.

    ``stats`` counts injected faults and served requests by kind; ``injected`` keeps
    the most recent InjectedFault records (``fault_counts`` counts them all), and
    ``on_fault`` is called with each one as it is injected.
    """

    def __init__(self, config: EmulatorConfig = EmulatorConfig(), *,
                 on_fault: Callable[[InjectedFault], None] | None = None) -> None:
        self.config = config
        self.ring = SimRing(config.ring, n_inputs=config.n_inputs, max_batch=config.max_batch,
                            seed=config.seed)
        self.rng = np.random.default_rng(config.faults.seed)
        self.stats: Counter = Counter()   # injected faults and served requests, by kind
        self.injected: deque[InjectedFault] = deque(maxlen=INJECTED_KEPT)
        self.fault_counts: Counter = Counter()
        self.on_fault = on_fault
        self.forwards = 0                 # FORWARDs received, over the device's life
        self.reset(ResetCause.POWER_ON)

    def reset(self, cause: ResetCause) -> None:
        """Reboot: parked, default configuration, empty replay cache."""
        n = self.config.n_inputs
        self.sampling = Configure(tuple(range(n)), tuple(range(self.config.ring.nodes)), 16)
        self.parked, self.cache, self.reset_cause = True, None, cause

    def report(self, fault: InjectedFault) -> None:
        """Record one injected fault and hand it to ``on_fault``."""
        self.injected.append(fault)
        self.fault_counts[fault.kind] += 1
        if self.on_fault is not None:
            self.on_fault(fault)

    async def serve(self, stream: trio.abc.Stream) -> None:
        """Answer requests on ``stream`` until it closes; raises Unplugged on that fault."""
        link = FaultyLink(stream, self.config.faults, self.rng, self.config.baud, self.stats,
                          self.report)
        frames = FrameDecoder()
        try:
            while data := await link.receive_some():
                for encoded in frames.split(data):
                    if isinstance(encoded, FrameError):   # longer than any frame: dropped
                        self.stats["dropped_frames"] += 1
                        continue
                    reply = await self._answer(encoded)
                    if reply is not None:
                        await link.send_frame(reply)
        finally:
            link.close()

    async def _answer(self, encoded: bytes) -> bytes | None:
        """The reply frame to one COBS-encoded frame (protocol §1.2, §4), or None when
        the frame fails checks 1-3 or the request dies with a reset."""
        key = replay_key(encoded)
        if key is None:
            self.stats["dropped_frames"] += 1
            return None
        if self.cache is not None and self.cache[0] == key:
            self.stats["replayed"] += 1
            return self.cache[1]
        self.cache = None
        try:
            frame = decode_frame(encoded)
        except ProtocolError as error:
            seq, trial_id, message = error.seq, error.trial_id, self._refusal(error)
        else:
            seq, trial_id = frame.seq, frame.trial_id
            message = await self._handle(frame)
            if message is None:
                return None
        reply = encode_frame(message, seq=seq, trial_id=trial_id)
        self.cache = (key, reply)
        return reply

    @staticmethod
    def _refusal(error: ProtocolError) -> ErrorReply:
        """The ERROR for a frame that failed checks 4-7 of §1.2 (seq and trial id copied)."""
        if isinstance(error, VersionError):
            return _error(ErrorCode.BAD_VERSION, str(error))
        if isinstance(error, FrameError):   # the length field
            return _error(ErrorCode.BAD_PAYLOAD, str(error))
        if isinstance(error, UnknownMessageError) or error.msg_type not in REQUEST_TYPES:
            return _error(ErrorCode.UNKNOWN_TYPE, f"type 0x{error.msg_type:02x} is not a request")
        return _error(getattr(error, "code", ErrorCode.BAD_PAYLOAD), str(error))

    async def _handle(self, frame: Frame) -> object | None:
        message = frame.message
        if message.TYPE not in REQUEST_TYPES:   # a reply type sent to the device
            return _error(ErrorCode.UNKNOWN_TYPE, f"type 0x{message.TYPE:02x} is not a request")
        if isinstance(message, HelloRequest):
            c = self.config
            return HelloReply(1, c.firmware_id, c.n_inputs, c.ring.nodes,
                              self.sampling.n_features, c.max_batch, self.reset_cause)
        if isinstance(message, Ping):
            return message.pong()
        if isinstance(message, Safe):
            self.parked = True
            return SafeAck()
        if isinstance(message, Configure):
            return self._configure(message)
        return await self._forward(frame)

    def _configure(self, message: Configure):
        """ACK, or BAD_CONFIG for a step or node the ring lacks or too big a RESULT (§3.2)."""
        c = self.config
        if message.steps[-1] >= c.n_inputs or message.nodes[-1] >= c.ring.nodes:
            return _error(ErrorCode.BAD_CONFIG, f"step {message.steps[-1]} or node {message.nodes[-1]} "
                          f"beyond {c.n_inputs} inputs, {c.ring.nodes} nodes")
        size = result_payload_size(c.max_batch, message.n_features, message.bits)
        if size > MAX_PAYLOAD:
            return _error(ErrorCode.BAD_CONFIG, f"RESULT of {size} bytes at max_batch "
                          f"{c.max_batch} exceeds {MAX_PAYLOAD}")
        self.sampling, self.parked = message, False
        return message.ack()

    def _fault(self, kind: str, frame: Frame, detail: str = "") -> None:
        self.report(InjectedFault(kind, frame.message.TYPE.name, frame.seq, frame.trial_id, detail))

    async def _forward(self, frame: Frame):
        """RESULT, or the refusals of §3.3 after the codec's checks, in that order."""
        c, faults, message = self.config, self.config.faults, frame.message
        assert isinstance(message, Forward)
        batch, width = message.codes.shape
        if batch > c.max_batch:
            return _error(ErrorCode.BATCH_TOO_LARGE, f"batch {batch} > {c.max_batch}")
        if width != c.n_inputs:
            return _error(ErrorCode.SHAPE_MISMATCH, f"{width} inputs, ring has {c.n_inputs}")
        if self.parked:
            return _error(ErrorCode.PARKED, "parked: send CONFIGURE")
        self.forwards += 1
        if faults.unplug_at and self.forwards == faults.unplug_at:
            self.stats["unplugged"] += 1
            self._fault("unplugged", frame, f"for {faults.unplug_s:g} s")
            raise Unplugged(f"unplugged at FORWARD {self.forwards}")
        if faults.reset_every and self.forwards % faults.reset_every == 0:
            self.stats["resets"] += 1
            self._fault("reset", frame, "watchdog")
            self.reset(ResetCause.WATCHDOG)
            return None   # the request dies with the firmware
        if faults.stall and self.rng.random() < faults.stall:
            self.stats["stalls"] += 1
            self._fault("stalled", frame, f"{faults.stall_s:g} s")
            await trio.sleep(faults.stall_s)
        return await self._drive(message.codes)

    async def _drive(self, codes: np.ndarray) -> Result:
        """Each sample: ``settle`` zero-drive round trips, then one per input step (§3.2)."""
        c, s = self.config, self.sampling
        batch, width = len(codes), s.settle + c.n_inputs
        await trio.sleep(c.latency_s + batch * width * c.round_trip_s)
        u = np.concatenate([np.zeros((batch, s.settle)), dequantize_inputs(codes)], axis=1)
        feats = np.asarray(await self._ring(width).forward(u))
        feats = feats.reshape(batch, width, c.ring.nodes)[:, s.settle:]
        feats = feats[:, list(s.steps)][:, :, list(s.nodes)].reshape(batch, -1)
        self.stats["forwards_driven"] += 1
        return Result(quantize_features(feats, s.bits, c.scale), s.bits, c.scale)

    def _ring(self, width: int) -> SimRing:
        """The simulated ring for ``width`` round trips per sample; its clock carries on."""
        if self.ring.info.n_inputs != width:
            ring = SimRing(self.config.ring, n_inputs=width, max_batch=self.config.max_batch,
                           seed=self.config.seed)
            ring.load_state_dict(self.ring.state_dict())
            self.ring = ring
        return self.ring
