"""A pool of reservoirs: one worker task per device, trials through a bounded channel.

``open_pool(urls)`` opens every device (any mix of sim://, serial://, socket://,
emu://), checks that they agree on ``n_inputs`` and ``n_features``, and starts one
worker task per device. ``DevicePool.map_trials(n, prepare, finish)`` runs n trials
in the calling task: it calls ``prepare(i)`` (the host's work before the ring: a
list of input batches that must all run on one device, e.g. the two halves of a
central difference) and puts trial i on the shared channel; each worker takes the
next trial as soon as its device is free (``in_flight`` workers per device, so that
the next request already waits at the device when the current one ends and a device
never idles while the host's loop is busy); the calling task runs ``finish(i, features)``
(the work after the ring) as results arrive, gathered by trial id. At most
``prefetch`` trials per device are prepared ahead, so a device never waits for the
host while the host is never far ahead of the devices.

Stragglers and failures: each attempt runs under a deadline (``trial_timeout_s``,
or ten times the device's mean time per batch, at least ``min_timeout_s``). An
attempt that times out or fails is cancelled and its trial goes back on the
channel for any device; the device sits out ``cooldown_s``, and after
``quarantine_after`` faults in a row it is quarantined (``device_quarantined``)
until a trial succeeds on it again (``device_recovered``). A trial is finished
once, by the first result; a second result for it is dropped (``late``), so
nothing is counted twice. ``health`` is quarantined while no device is in service
(the run loop logs ``run_suspended`` / ``run_resumed_after_suspend``).

The pool is itself a Reservoir (``info``, ``forward``): ``forward(u)`` splits a
large batch over the devices, so evaluation needs no special path.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import structlog
import trio

from pgt.backends import DeviceHealth, ReservoirError, ReservoirInfo

__all__ = ["DevicePool", "PoolMismatch", "open_devices", "open_pool"]

_FAULTS = (ReservoirError, OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class PoolMismatch(ReservoirError):
    """The pool's devices disagree on their sizes (inputs or features)."""


@dataclass(eq=False)
class _Batch:
    """One ``map_trials`` call: where its results go, and whether it still wants them."""

    results: trio.MemorySendChannel
    closed: bool = False


@dataclass(eq=False)
class _Trial:
    id: int
    index: int
    inputs: list[np.ndarray]
    batch: _Batch
    attempts: int = 0
    finished: bool = False


@dataclass
class DeviceStats:
    """What one device did: busy seconds, trials served, faults, timeouts."""

    name: str
    busy_s: float = 0.0
    trials: int = 0
    forwards: int = 0
    timeouts: int = 0
    faults: int = 0
    in_a_row: int = 0
    quarantined: bool = False
    mean_s: float | None = None          # running mean seconds per forward
    benched_until: float = field(default=0.0)


class DevicePool:
    """Several reservoirs behind one ``map_trials``; use ``open_pool``."""

    def __init__(self, devices: Sequence, names: Sequence[str], *, trial_timeout_s: float = 0.0,
                 min_timeout_s: float = 1.0, cooldown_s: float = 1.0, quarantine_after: int = 3,
                 prefetch: int = 2, in_flight: int = 2) -> None:
        if not devices:
            raise PoolMismatch("a device pool needs at least one device")
        infos = [d.info for d in devices]
        for name, info in zip(names, infos):
            if (info.n_inputs, info.n_features) != (infos[0].n_inputs, infos[0].n_features):
                raise PoolMismatch(
                    f"devices disagree: {names[0]} has {infos[0].n_inputs} inputs and "
                    f"{infos[0].n_features} features, {name} has {info.n_inputs} and "
                    f"{info.n_features}")
        self.devices, self.names = list(devices), list(names)
        self.info = ReservoirInfo(name=f"pool of {len(devices)}", n_inputs=infos[0].n_inputs,
                                  n_features=infos[0].n_features,
                                  max_batch=min(i.max_batch for i in infos))
        self.trial_timeout_s, self.min_timeout_s = trial_timeout_s, min_timeout_s
        self.cooldown_s, self.quarantine_after = cooldown_s, quarantine_after
        self.depth = (prefetch + in_flight) * len(devices)
        self.in_flight = in_flight
        # Room for the trials a map_trials has out (at most depth, plus the rest of its
        # last batch) twice over, plus one re-dispatch per worker: never full.
        self._tx, self._rx = trio.open_memory_channel[_Trial](2 * self.depth + in_flight * len(devices))
        self.stats = [DeviceStats(n) for n in names]
        # One worker of a device at a time waits on the channel, so that trials go out one
        # per idle device first: the next trial goes to another device's worker before
        # it queues behind a device that already has one.
        self._turns = [trio.Lock() for _ in devices]
        self.health = DeviceHealth()
        self.late = 0          # results that arrived for an already-finished trial
        self.redispatched = 0
        self._next_id = 0
        self._log = structlog.get_logger()

    # -- the caller's side ----------------------------------------------------------

    async def map_trials(self, n: int, prepare: Callable[[int], list[np.ndarray]] | None = None,
                         finish: Callable[[int, list[np.ndarray]], None] | None = None, *,
                         prepare_many: Callable[[int], list[list[np.ndarray]]] | None = None,
                         finish_many: Callable[[list[tuple[int, list[np.ndarray]]]], None]
                         | None = None) -> None:
        """Run trials 0..n-1 across the devices; see the module docstring.

        ``prepare(i)`` returns the input batches of trial i (each (B, n_inputs));
        ``finish(i, features)`` gets their features in the same order, once per trial.
        ``prepare_many(i)`` instead returns the input batches of trials i, i+1, ... (one
        or more), all handed to the devices before the host prepares more: a step's
        first trials, one per device, prepared in one pass, start together.
        ``finish_many`` instead gets every result that has arrived, as [(i, features)],
        so that the host's work after the ring runs once for several trials (the last
        trials of a batch end nearly together, and each would wait for the others').
        """
        if prepare_many is None:
            prepare_many = lambda i: [prepare(i)]   # noqa: E731
        results_tx, results_rx = trio.open_memory_channel[tuple](math.inf)
        batch = _Batch(results_tx)
        sent = finished = 0
        try:
            while finished < n:
                # The host prepares while fewer than ``depth`` trials are out (the
                # prepared ones wait on the channel for a free device), then waits for
                # results; a finished trial frees room for the next. One task does both,
                # so a result never waits for a feeder task to be scheduled, or the reverse.
                while sent < n and sent - finished < self.depth:
                    waiting = self._rx.statistics().tasks_waiting_receive
                    batch_inputs = prepare_many(sent)
                    if not 0 < len(batch_inputs) <= n - sent:
                        raise ValueError(f"preparing trial {sent} of {n} gave {len(batch_inputs)} "
                                         f"trials (expected 1 to {n - sent})")
                    for trial_inputs in batch_inputs:
                        self._next_id += 1
                        inputs = [np.asarray(u) for u in trial_inputs]
                        trial = _Trial(self._next_id, sent, inputs, batch)
                        try:
                            self._tx.send_nowait(trial)   # room for all that are out: see __init__
                        except trio.WouldBlock:           # several map_trials at once
                            await self._tx.send(trial)
                        sent += 1
                    # Workers handed a trial start their devices before the host's next
                    # prepare: two checkpoints, since trio may run this task first in the
                    # next round of the scheduler. One, at least, for the other tasks.
                    await trio.lowlevel.checkpoint()
                    if waiting:
                        await trio.lowlevel.checkpoint()
                done = [await self._next_result(results_rx)]
                if finish_many is not None:
                    done += self._more_results(results_rx)
                    finish_many([(trial.index, features) for trial, features in done])
                else:
                    finish(done[0][0].index, done[0][1])
                finished += len(done)
        finally:
            batch.closed = True

    def _first(self, trial: _Trial) -> bool:
        """Whether this result is the trial's first; a re-dispatched trial may answer
        twice, and only the first one counts (the other is ``late``)."""
        if trial.finished:
            self.late += 1
            return False
        trial.finished = True
        return True

    async def _next_result(self, results_rx) -> tuple:
        while True:
            trial, features = await results_rx.receive()
            if self._first(trial):
                return trial, features

    def _more_results(self, results_rx) -> list[tuple]:
        """The results already waiting, without waiting for more."""
        more = []
        while True:
            try:
                trial, features = results_rx.receive_nowait()
            except trio.WouldBlock:
                return more
            if self._first(trial):
                more.append((trial, features))

    async def forward(self, u) -> np.ndarray:
        """Features of every row of ``u``, its chunks spread over the devices."""
        u = np.asarray(u, dtype=np.float64)
        size = max(1, min(self.info.max_batch, math.ceil(len(u) / len(self.devices))))
        chunks = [u[i : i + size] for i in range(0, len(u), size)]
        out: list = [None] * len(chunks)

        def store(i: int, features: list[np.ndarray]) -> None:
            out[i] = features[0]

        await self.map_trials(len(chunks), lambda i: [chunks[i]], store)
        return np.concatenate(out, axis=0)

    # -- the devices' side ------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """One worker per device, and a watcher of each device's own health."""
        async with trio.open_nursery() as nursery:
            for i, device in enumerate(self.devices):
                for _ in range(self.in_flight):   # the next request waits at the device
                    nursery.start_soon(self._work, i)
                if getattr(device, "health", None) is not None:
                    nursery.start_soon(self._watch, i)
            task_status.started()

    async def _work(self, i: int) -> None:
        device, stats = self.devices[i], self.stats[i]
        health = getattr(device, "health", None)
        while True:
            if health is not None:
                await health.wait_until(quarantined=False)
            if stats.benched_until > trio.current_time():
                await trio.sleep_until(stats.benched_until)
            turn = self._turns[i]
            try:
                turn.acquire_nowait()
            except trio.WouldBlock:
                await turn.acquire()
            try:
                trial = await self._rx.receive()
            finally:
                turn.release()
            if trial.batch.closed or trial.finished:
                continue
            if stats.benched_until > trio.current_time():   # benched while this worker waited
                self._tx.send_nowait(trial)
                continue
            await self._attempt(i, device, stats, trial)

    async def _attempt(self, i: int, device, stats: DeviceStats, trial: _Trial) -> None:
        trial.attempts += 1
        features, error, t0 = None, None, trio.current_time()
        with trio.CancelScope(deadline=t0 + self._timeout(stats, trial)) as scope:   # move_on_after
            try:
                features = [await self._forward(device, stats, u) for u in trial.inputs]
            except _FAULTS as exc:
                error = exc
        stats.busy_s += trio.current_time() - t0
        if features is not None:
            stats.trials += 1
            self._succeeded(i, stats)
            trial.batch.results.send_nowait((trial, features))
            return
        if scope.cancelled_caught:
            stats.timeouts += 1
            error_text = f"no result within {self._timeout(stats, trial):.3g} s"
        else:
            error_text = f"{type(error).__name__}: {error}"
        self._failed(i, stats, trial, error_text)

    async def _forward(self, device, stats: DeviceStats, u: np.ndarray) -> np.ndarray:
        limit = device.info.max_batch
        parts = []
        for start in range(0, len(u), limit):
            t0 = trio.current_time()
            parts.append(np.asarray(await device.forward(u[start : start + limit])))
            took = trio.current_time() - t0
            stats.mean_s = took if stats.mean_s is None else 0.9 * stats.mean_s + 0.1 * took
            stats.forwards += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def _timeout(self, stats: DeviceStats, trial: _Trial) -> float:
        if self.trial_timeout_s:
            return self.trial_timeout_s
        if stats.mean_s is None:
            return max(self.min_timeout_s, 10.0)   # the first trial on a device: be generous
        forwards = sum(math.ceil(len(u) / self.info.max_batch) for u in trial.inputs)
        return max(self.min_timeout_s, 10.0 * stats.mean_s * forwards)

    def _failed(self, i: int, stats: DeviceStats, trial: _Trial, error: str) -> None:
        stats.faults += 1
        stats.in_a_row += 1
        self.redispatched += 1
        self._log.warning("trial_redispatched", device=self.names[i], trial_id=trial.id,
                          attempts=trial.attempts, error=error)
        if not trial.batch.closed:
            self._tx.send_nowait(trial)   # never full: see __init__
        stats.benched_until = trio.current_time() + self.cooldown_s
        if stats.in_a_row >= self.quarantine_after and not stats.quarantined:
            stats.quarantined = True
            self._log.error("device_quarantined", device=self.names[i], failures=stats.in_a_row,
                            error=error, probe_every_s=self.cooldown_s)
            self._update_health()

    def _succeeded(self, i: int, stats: DeviceStats) -> None:
        stats.in_a_row = 0
        if stats.quarantined:
            stats.quarantined = False
            self._log.warning("device_recovered", device=self.names[i])
            self._update_health()

    async def _watch(self, i: int) -> None:
        health = self.devices[i].health
        while True:
            await health.wait_until(quarantined=not health.quarantined)
            self._update_health()

    def in_service(self, i: int) -> bool:
        health = getattr(self.devices[i], "health", None)
        return not self.stats[i].quarantined and not (health is not None and health.quarantined)

    def _update_health(self) -> None:
        healthy = any(self.in_service(i) for i in range(len(self.devices)))
        if healthy and self.health.quarantined:
            self.health.recover()
        elif not healthy and not self.health.quarantined:
            self.health.quarantine(f"no device in service (all {len(self.devices)} quarantined)")

    # -- what a run reports and checkpoints --------------------------------------------

    @property
    def link_seconds(self) -> float:
        return sum(getattr(d, "link_seconds", 0.0) for d in self.devices)

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {}
        for i, device in enumerate(self.devices):
            get = getattr(device, "state_dict", None)
            if get is not None:
                state.update({f"{i}.{k}": v for k, v in get().items()})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        for i, device in enumerate(self.devices):
            mine = {k.partition(".")[2]: v for k, v in state.items() if k.startswith(f"{i}.")}
            loader = getattr(device, "load_state_dict", None)
            if mine and loader is not None:
                loader(mine)


@contextlib.asynccontextmanager
async def open_pool(urls: Sequence[str], *, open_reservoir=None, seed: int = 0,
                    device: str = "cpu", **options) -> AsyncIterator[DevicePool]:
    """Open every URL (device i seeded ``seed + i``) and run the pool's workers.

    Raises the backends' errors (ReservoirURLError, DeviceUnavailable) for a device
    that cannot be opened, and PoolMismatch when the devices disagree on sizes.
    """
    if open_reservoir is None:
        from pgt.backends import open_reservoir
    async with contextlib.AsyncExitStack() as stack:
        devices = [await stack.enter_async_context(open_reservoir(url, seed=seed + i, device=device))
                   for i, url in enumerate(urls)]
        names = [f"{i}:{url}" for i, url in enumerate(urls)]
        yield await _running(stack, DevicePool(devices, names, **options))


async def _running(stack: contextlib.AsyncExitStack, pool: DevicePool) -> DevicePool:
    nursery = await stack.enter_async_context(trio.open_nursery())
    stack.callback(nursery.cancel_scope.cancel)
    await nursery.start(pool.run)
    return pool


def open_devices(cfg, open_reservoir):
    """The run's reservoir: a pool of ``reservoir.urls`` when set, else ``reservoir.url``.

    One in-process device keeps the trainer's batched path (every probe in one forward);
    a pool puts each probe pair on its own trial.
    """
    r = cfg.reservoir
    if r.urls:
        return open_pool(r.urls, open_reservoir=open_reservoir, seed=cfg.seed,
                         device=cfg.device, trial_timeout_s=r.trial_timeout_s)
    return open_reservoir(r.url, seed=cfg.seed, device=cfg.device)
