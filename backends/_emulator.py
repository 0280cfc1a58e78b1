"""The emulated microcontroller: the device side of the protocol, the simulated ring behind.

``EmulatedDevice`` is the firmware: it decodes requests with the same sans-IO codec,
keeps the configuration, the parked state, the reset cause and the replay cache of
docs/protocol.md, and answers each request in order. FORWARD dequantizes the codes,
runs ``backends._sim.SimRing`` (so noise and drift are the simulator's), samples
the configured steps and nodes, and quantizes the features at the configured
resolution. ``serve(stream)`` runs one connection; the device's state survives a
connection (a host reconnecting over a UART finds the same device) but not a reset
or an unplug. Serving over a pty, TCP or memory is in ``_emulate``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import trio

from pgt.backends._faults import FaultSpec, FaultyLink
from pgt.backends._messages import (Configure, ErrorCode, ErrorReply, Forward, HelloReply,
                                HelloRequest, Ping, ResetCause, Result, Safe, SafeAck)
from pgt.backends._sim import SimRing
from pgt.backends._wire import (CrcError, FrameDecoder, FrameError, PayloadError,
                            ProtocolError, UnknownMessageError, VersionError, batch_limit,
                            dequantize_inputs, encode_frame, quantize_features)
from pgt.kernels import RingParams

__all__ = ["EmulatedDevice", "EmulatorConfig", "Unplugged"]

FIRMWARE_ID = "pgt-emulator/1"


class Unplugged(Exception):
    """The emulated cable was pulled: the connection ends, the device powers off."""


@dataclass(frozen=True)
class EmulatorConfig:
    """The emulated board: its ring, sizes, timing and faults."""

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


class EmulatedDevice:
    """One emulated microcontroller; ``serve`` it on any number of successive links."""

    def __init__(self, config: EmulatorConfig = EmulatorConfig()) -> None:
        self.config = config
        self.ring = SimRing(config.ring, n_inputs=config.n_inputs, max_batch=config.max_batch,
                            seed=config.seed)
        self.rng = np.random.default_rng(config.faults.seed)
        self.stats: Counter = Counter()   # injected faults and served requests, by kind
        self.forwards = 0                 # FORWARDs received, over the device's life
        self._unplugged = False
        self.reset(ResetCause.POWER_ON)

    def reset(self, cause: ResetCause) -> None:
        """Reboot: parked, default configuration, empty replay cache."""
        n = self.config.n_inputs
        self.sampling = Configure(tuple(range(n)), tuple(range(self.config.ring.nodes)), 16)
        self.parked, self.cache, self.reset_cause = True, None, cause

    async def serve(self, stream: trio.abc.Stream) -> None:
        """Answer requests on ``stream`` until it closes; raises Unplugged on that fault."""
        link = FaultyLink(stream, self.config.faults, self.rng, self.config.baud, self.stats)
        decoder = FrameDecoder()
        while data := await link.receive_some():
            for item in decoder.feed(data):
                reply = await self._answer(item)
                if reply is not None:
                    await link.send_frame(reply)

    async def _answer(self, item) -> bytes | None:
        if isinstance(item, ProtocolError):
            return self._refuse(item)
        key = encode_frame(item.message, seq=item.seq, trial_id=item.trial_id)
        if self.cache is not None and self.cache[0] == key:
            self.stats["replayed"] += 1
            return self.cache[1]
        message = await self._handle(item.message)
        if message is None:
            return None
        reply = encode_frame(message, seq=item.seq, trial_id=item.trial_id)
        self.cache = (key, reply)
        return reply

    def _refuse(self, error: ProtocolError) -> bytes | None:
        """Checks 1-3 fail silently; later ones are answered with ERROR (protocol §1.2)."""
        if isinstance(error, CrcError) or (isinstance(error, FrameError) and error.seq is None):
            self.stats["dropped_frames"] += 1
            return None
        code = {VersionError: ErrorCode.BAD_VERSION, UnknownMessageError: ErrorCode.UNKNOWN_TYPE,
                PayloadError: ErrorCode.BAD_PAYLOAD, FrameError: ErrorCode.BAD_PAYLOAD}[type(error)]
        reply = ErrorReply(code, str(error)[:128])
        return encode_frame(reply, seq=error.seq or 0, trial_id=error.trial_id or 0)

    async def _handle(self, message) -> object | None:
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
        if isinstance(message, Forward):
            return await self._forward(message)
        return ErrorReply(ErrorCode.UNKNOWN_TYPE, f"{message.TYPE.name} is not a request")

    def _configure(self, message: Configure):
        c = self.config
        if message.steps[-1] >= c.n_inputs or message.nodes[-1] >= c.ring.nodes:
            return ErrorReply(ErrorCode.BAD_CONFIG, "step or node beyond the ring")
        if batch_limit(c.n_inputs, message.n_features, message.bits) < c.max_batch:
            return ErrorReply(ErrorCode.BAD_CONFIG, "a RESULT of max_batch would not fit")
        self.sampling, self.parked = message, False
        return message.ack()

    async def _forward(self, message: Forward):
        c, faults = self.config, self.config.faults
        batch, width = message.codes.shape
        if batch > c.max_batch:
            return ErrorReply(ErrorCode.BATCH_TOO_LARGE, f"batch {batch} > {c.max_batch}")
        if width != c.n_inputs:
            return ErrorReply(ErrorCode.SHAPE_MISMATCH, f"{width} inputs, ring has {c.n_inputs}")
        if self.parked:
            return ErrorReply(ErrorCode.PARKED, "parked: send CONFIGURE")
        self.forwards += 1
        if faults.unplug_at and self.forwards == faults.unplug_at:
            self.stats["unplugged"] += 1
            raise Unplugged(f"unplugged at FORWARD {self.forwards}")
        if faults.reset_every and self.forwards % faults.reset_every == 0:
            self.stats["resets"] += 1
            self.reset(ResetCause.WATCHDOG)
            return None   # the request dies with the firmware
        if faults.stall and self.rng.random() < faults.stall:
            self.stats["stalls"] += 1
            await trio.sleep(faults.stall_s)
        return await self._drive(message.codes)

    async def _drive(self, codes: np.ndarray) -> Result:
        c, s = self.config, self.sampling
        rounds = codes.shape[0] * (s.settle + c.n_inputs)
        await trio.sleep(c.latency_s + rounds * c.round_trip_s)
        feats = np.asarray(await self.ring.forward(dequantize_inputs(codes)))
        feats = feats.reshape(len(codes), c.n_inputs, c.ring.nodes)
        feats = feats[:, list(s.steps)][:, :, list(s.nodes)].reshape(len(codes), -1)
        self.stats["forwards_driven"] += 1
        return Result(quantize_features(feats, s.bits, c.scale), s.bits, c.scale)
