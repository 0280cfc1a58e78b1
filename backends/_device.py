"""A microcontroller-driven ring behind the Reservoir protocol, surviving link faults.

``open_device(connector, options)`` connects, verifies the device with HELLO,
configures it, and runs one worker task that owns the link for as long as the
``async with`` lasts. ``forward(u)`` quantizes a batch into a *trial* (a u32 id),
hands it to the worker through an unbuffered channel and waits for its features.
The worker sends one FORWARD at a time (``_session`` retries it with the same seq,
so the device replays instead of driving the ring twice). When the link fails it
reconnects with exponential backoff and jitter, verifies HELLO again (same
firmware and sizes, reset cause logged), configures again and re-sends the trial
that was in flight as a new request with the same trial id. A trial is counted
only when its RESULT is accepted, so nothing is counted twice or lost. After
``quarantine_after`` faults in a row the device is quarantined (``health``): the
run waits, probing every ``quarantine_s``, until a request succeeds again.

A RESULT whose shape or resolution is not what was configured, or a reply of the
wrong type, never leaves this module: it is a device fault, logged and retried (a
RESULT with a scale that is not > 0 never leaves the codec).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import structlog
import trio

from pgt.backends._device_link import DeviceDataError, Handshake, Options, control_timeout, handshake
from pgt.backends._faults import link_seconds
from pgt.backends._health import DeviceHealth
from pgt.backends._messages import (ErrorCode, Forward, Message, Ping, Result, Safe,
                                forward_payload_size, result_payload_size)
from pgt.backends._protocol import ReservoirError, ReservoirInfo, check_inputs
from pgt.backends._session import (DeviceMismatch, DeviceRefused, LinkLost, Session, open_session,
                               single_errors)
from pgt.backends._transport import Connector
from pgt.backends._wire import dequantize_features, encoded_size, quantize_inputs

__all__ = ["DeviceReservoir", "DeviceUnavailable", "open_device"]

_FAULTS = (LinkLost, DeviceRefused, DeviceDataError, DeviceMismatch, OSError,
           trio.BrokenResourceError)
_PING_EVERY = 2.0


class DeviceUnavailable(ReservoirError):
    """The device could not be reached and verified when the reservoir was opened."""


@dataclass(eq=False)
class _Trial:
    id: int
    codes: np.ndarray
    features: np.ndarray | None = None
    abandoned: bool = False   # the caller was cancelled: do not send it
    requests: int = 0         # FORWARD requests made for it (a resend is the same request)
    park: bool = False        # not a trial: park the ring (SAFE)

    def __post_init__(self) -> None:
        self.done = trio.Event()


class DeviceReservoir:
    """A Reservoir on a device that speaks docs/protocol.md. Use ``open_device``."""

    @property
    def identity(self) -> dict:
        """Who answered HELLO: firmware, protocol version, sizes, reset cause, where."""
        if self.first is None:
            return {"where": self.where}
        h = self.first.hello
        return {"where": self.where, "firmware_id": h.firmware_id,
                "protocol_version": h.protocol_version, "n_inputs": h.n_inputs,
                "n_nodes": h.n_nodes, "n_features": self.first.config.n_features,
                "max_batch": h.max_batch, "reset_cause": h.reset_cause.name}

    def __init__(self, connector: Connector, options: Options, where: str) -> None:
        self._connect, self.options, self.where = connector, options, where
        self._log = structlog.get_logger()
        self._trials_tx, self._trials_rx = trio.open_memory_channel[_Trial](0)
        self._next_id = 1
        self._current: _Trial | None = None
        self._failures = 0
        self._per_sample: float | None = None   # measured device seconds per sample
        self.health = DeviceHealth()
        self.first: Handshake | None = None
        self.info: ReservoirInfo | None = None
        self.link_seconds = 0.0   # link time of every byte moved (needs options.baud)
        self.accepted = 0

    async def forward(self, u) -> np.ndarray:
        u = np.asarray(u, dtype=np.float64)
        check_inputs(self.info, u)
        try:
            codes = quantize_inputs(u)
        except ValueError as exc:
            raise ValueError(f"{self.info.name}: {exc}") from None
        trial = _Trial(self._next_id, codes)
        self._next_id = self._next_id % 0xFFFFFFFF + 1
        try:
            await self._trials_tx.send(trial)
            await trial.done.wait()
        finally:
            trial.abandoned = True
        return trial.features

    # -- the worker ---------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Own the link: connect, serve trials, reconnect after faults. Never returns."""
        opened = trio.current_time()
        delay = 0.1
        while True:
            error = await self._connection(task_status)
            if self.first is None:
                if isinstance(error, DeviceMismatch) or (
                        trio.current_time() - opened >= self.options.open_timeout_s):
                    raise DeviceUnavailable(f"device at {self.where}: {error}")
            else:
                self._fault(error)
            wait = self.options.quarantine_s if self.health.quarantined else delay
            await trio.sleep(wait * random.uniform(0.8, 1.2))
            delay = min(2 * delay, self.options.backoff_max_s)
            if self._failures == 0:
                delay = 0.1

    async def _connection(self, task_status) -> BaseException:
        """One connection, from opening to its fault (returned, not raised)."""
        try:
            stream = await self._connect()
        except OSError as exc:
            return exc
        try:
            async with open_session(stream, self._log, retries=self.options.retries) as session:
                await session.send_raw(b"\x00")   # flush whatever partial frame the device holds
                await self._verify(session)
                if self.info is None:
                    self.info = self.first.info(self.options)
                    task_status.started()
                await self._serve(session)
        except _FAULTS as exc:
            return exc
        raise AssertionError("unreachable")

    async def _verify(self, session: Session, *, reason: str = "connect") -> None:
        hs = await handshake(session, self.options, self._control_timeout)
        if self.first is None:
            self.first = hs
            return
        self.first.check_same_device(hs)
        self._log.warning("device_reconnect", reason=reason, reset_cause=hs.reset_cause.name.lower(),
                          where=self.where, failures=self._failures)

    def _fault(self, error: BaseException) -> None:
        self._failures += 1
        self._log_fault(error)
        quarantine = self._failures >= self.options.quarantine_after or isinstance(error, DeviceMismatch)
        if quarantine and not self.health.quarantined:
            self._log.error("device_quarantined", failures=self._failures, error=str(error),
                            where=self.where, probe_every_s=self.options.quarantine_s)
            self.health.quarantine(str(error))

    def _log_fault(self, error: BaseException) -> None:
        """One ``device_fault`` event; seq and trial_id name the request it ended, if any."""
        self._log.warning("device_fault", error=f"{type(error).__name__}: {error}",
                          failures=self._failures, where=self.where,
                          seq=getattr(error, "seq", None), trial_id=getattr(error, "trial_id", None))

    def _succeeded(self) -> None:
        self._failures = 0
        if self.health.quarantined:
            self._log.warning("device_recovered", where=self.where)
            self.health.recover()

    async def _serve(self, session: Session) -> None:
        while True:
            if self._current is None:
                with trio.move_on_after(_PING_EVERY) as idle:
                    self._current = await self._trials_rx.receive()
                if idle.cancelled_caught:
                    await self._ping(session)
                    continue
            trial = self._current
            if trial.park:
                self._current = None
                await session.request(Safe(), timeout=self._control_timeout(Safe()))
                trial.done.set()
            elif not trial.abandoned:
                features = await self._forward(session, trial)
                if not trial.abandoned:
                    trial.features = features
                    self._accept(trial)
            self._current = None
            self._succeeded()

    async def _ping(self, session: Session) -> None:
        ping = Ping(random.getrandbits(32))
        await session.request(ping, timeout=self._control_timeout(ping))
        self._succeeded()

    async def _forward(self, session: Session, trial: _Trial) -> np.ndarray:
        """The trial's features; answers PARKED (a reset) by verifying and configuring."""
        while True:
            trial.requests += 1
            try:
                return await self._exchange(session, trial)
            except DeviceRefused as exc:
                if exc.code != ErrorCode.PARKED or trial.requests > 3:
                    raise
                self._log_fault(exc)
                await self._verify(session, reason="parked")

    async def _exchange(self, session: Session, trial: _Trial) -> np.ndarray:
        batch = len(trial.codes)
        sent, received, t0 = session.bytes_sent, session.bytes_received, trio.current_time()
        try:
            reply = await session.request(Forward(trial.codes), trial_id=trial.id,
                                          timeout=self._forward_timeout(batch))
        finally:
            moved = session.bytes_sent - sent + session.bytes_received - received
            self.link_seconds += link_seconds(moved, self.options.baud)
        features = self._check_result(reply, batch)
        if session.last_attempts == 1:
            device_time = trio.current_time() - t0 - link_seconds(moved, self.options.baud)
            sample = max(device_time, 0.0) / batch
            self._per_sample = sample if self._per_sample is None else 0.8 * self._per_sample + 0.2 * sample
        return features

    def _check_result(self, reply, batch: int) -> np.ndarray:
        want = (batch, self.info.n_features)
        if not isinstance(reply, Result):
            raise DeviceDataError(f"FORWARD answered by {type(reply).__name__}")
        if reply.codes.shape != want:
            raise DeviceDataError(f"RESULT of shape {reply.codes.shape}, expected {want}")
        if reply.bits != self.options.bits:
            raise DeviceDataError(f"RESULT of {reply.bits}-bit codes, configured {self.options.bits}")
        return dequantize_features(reply.codes, reply.bits, reply.scale)

    def _accept(self, trial: _Trial) -> None:
        self.accepted += 1
        if self.options.log_trials:
            self._log.info("trial_accepted", trial_id=trial.id, batch=len(trial.codes),
                           requests=trial.requests)
        trial.done.set()

    def _forward_timeout(self, batch: int) -> float:
        """Deadline of one attempt of a FORWARD of ``batch`` samples (protocol §4):
        max(50 ms, 3 (L(request + reply) + D)), D the measured device time of the batch."""
        if self.options.timeout_s:
            return self.options.timeout_s
        wire = (encoded_size(forward_payload_size(batch, self.info.n_inputs))
                + encoded_size(result_payload_size(batch, self.info.n_features, self.options.bits)))
        # Before the first measurement: a guess generous for a microcontroller (0.2 s + 10 ms a sample).
        device = 0.2 + 0.01 * batch if self._per_sample is None else self._per_sample * batch
        return max(0.05, 3 * (link_seconds(wire, self.options.baud) + device))

    def _control_timeout(self, message: Message) -> float:
        return control_timeout(message, self.options.baud)

    async def park(self, timeout: float = 1.0) -> None:
        """Ask the device to park the ring (zero drive); best effort, used when closing."""
        trial = _Trial(0, np.zeros((0, 0), np.int16), park=True)
        with trio.move_on_after(timeout):
            await self._trials_tx.send(trial)
            await trial.done.wait()


@contextlib.asynccontextmanager
async def open_device(connector: Connector, options: Options, where: str
                      ) -> AsyncIterator[DeviceReservoir]:
    """A DeviceReservoir whose worker lives as long as the ``async with``.

    Raises DeviceUnavailable when no verified device answers within
    ``options.open_timeout_s`` or the device cannot be used (version, sizes).
    """
    device = DeviceReservoir(connector, options, where)
    with single_errors():
        async with trio.open_nursery() as nursery:
            await nursery.start(device.run)
            try:
                yield device
            finally:
                with trio.CancelScope(shield=True):
                    await device.park()
                nursery.cancel_scope.cancel()
