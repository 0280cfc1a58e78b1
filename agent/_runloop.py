"""The run loop: train, log, evaluate, checkpoint, stop cleanly on a signal.

``run_training`` drives a ``Trainer`` through a configured run inside its run
directory (config.toml, events.jsonl, checkpoints/). Ctrl-C or SIGTERM once: the
current step finishes, a checkpoint is written, ``run_stop reason=signal`` is logged
and the function returns. A second signal raises ``RunInterrupted`` at once. A run
resumed from its latest checkpoint continues bit-exactly: the checkpoint holds the
trainer's complete ``state_dict()``.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import signal
import socket
from pathlib import Path
from typing import Any

import numpy as np
import trio

from pgt._checkpoint import (BEST, CheckpointError, best_checkpoint, latest_checkpoint,
                             list_checkpoints, load_checkpoint, save_checkpoint)
from pgt._config import config_to_toml, load_config
from pgt._lock import LOCK_FILE, RunLock
from pgt._logging import EVENTS_FILE, RunLog, get_logger, next_session
from pgt._progress import Progress, result_line
from pgt._schema import Config
from pgt._trainer import Diverged

__all__ = ["RunDirError", "RunDirTaken", "RunDiverged", "RunInterrupted", "SuspendLimitReached",
           "train_new", "evaluate_run", "freeze_startup_objects",
           "new_run_dir", "read_run_config", "run_training"]

CONFIG_FILE = "config.toml"
DATA_FILE = "data.json"        # where the run's data came from and how it was prepared
ARRAYS_FILE = "data.npz"       # arrays handed to the Python API, kept with the run
OBJECT_SCHEME = "object://"    # reservoir.url of a run given a reservoir object in Python


class RunDirError(Exception):
    """A run directory is missing, incomplete or already taken (one-line message)."""


class RunDirTaken(RunDirError):
    """Another run has the directory: it exists, or a live process holds it."""


class RunInterrupted(Exception):
    """A second stop signal ended the run at once; the last checkpoint is kept."""


class RunDiverged(Exception):
    """The run went non-finite and train.on_divergence stopped it (exit status 3)."""


class SuspendLimitReached(Exception):
    """No device was in service for reservoir.suspend_limit_s (exit status 75)."""


SUSPEND_REPORT_S = 60.0   # a run_still_suspended event this often while suspended
MAX_ROLLBACKS = 5         # train.on_divergence = "rollback": at most this many


def new_run_dir(cfg: Config) -> Path:
    """``<cfg.run_dir>/<run_name>``, or a fresh ``<time>-s<seed>-<estimator>`` name."""
    parent = Path(cfg.run_dir)
    if cfg.run_name:
        return parent / cfg.run_name
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-s{cfg.seed}-{cfg.estimator.name}"
    candidate, n = parent / base, 1
    while candidate.exists():  # two runs started within one second
        n += 1
        candidate = parent / f"{base}-{n}"
    return candidate


async def train_new(cfg: Config, **kwargs: Any) -> dict[str, Any]:
    """``run_training`` of a new run in ``new_run_dir(cfg)``. Two runs started in the
    same second pick the same time-stamped name; the one that finds it taken takes
    the next. A name the config gives is used as it is."""
    for _ in range(20):
        run_dir = new_run_dir(cfg)
        try:
            return await run_training(cfg, run_dir, resume=False, **kwargs)
        except RunDirTaken:
            if cfg.run_name:
                raise
    raise RunDirError(f"no free run directory name under {cfg.run_dir} after 20 tries")


def read_run_config(run_dir: Path) -> Config:
    """The resolved configuration a run was started with. Raises RunDirError."""
    if not run_dir.is_dir():
        raise RunDirError(f"no run directory at {run_dir}")
    if not (run_dir / CONFIG_FILE).is_file():
        from pgt._lock import held_by

        if (holder := held_by(run_dir)) is not None:   # a run starting there right now
            pid, _, host = holder.partition(" ")
            raise RunDirTaken(f"run directory {run_dir} is in use by pid {pid} on {host}; "
                              f"one process at a time trains a run")
        raise RunDirError(f"no {CONFIG_FILE} in {run_dir}: not a run directory")
    return load_config(run_dir / CONFIG_FILE, [])


def _load_latest(run_dir: Path, log: Any = None, start: str | None = None,
                 skipped: list[str] | None = None):
    """(path, arrays, meta) of the newest checkpoint that loads and verifies, or None
    when the run has none. A damaged newer one is passed over (named in ``skipped``
    and, given ``log``, a ``checkpoint_skipped`` event) and deleted nothing; when none
    is valid, the newest one's error is raised. ``start`` ("step-N"): that one only.
    """
    paths = list(reversed(list_checkpoints(run_dir)))
    if start is not None:
        chosen = [p for p in paths if p.name == start]
        if not chosen:
            names = ", ".join(p.name for p in paths) or "none"
            raise CheckpointError(f"no checkpoint {start} in {run_dir / 'checkpoints'} "
                                  f"(there: {names})")
        paths = chosen
    errors: list[CheckpointError] = []
    for path in paths:
        try:
            arrays, meta = load_checkpoint(path)
        except CheckpointError as e:
            errors.append(e)
            continue
        for e in errors:
            if skipped is not None:
                skipped.append(str(e))
            if log is not None:
                log.warning("checkpoint_skipped", reason=str(e))
        return path, arrays, meta
    if errors:
        raise errors[0]
    return None


def _defaults(make_trainer: Any, open_reservoir: Any) -> tuple[Any, Any]:
    """The real Trainer and backends, imported only when a run really starts."""
    if make_trainer is None:
        from pgt._trainer import Trainer as make_trainer
    if open_reservoir is None:
        from pgt.backends import open_reservoir
    return make_trainer, open_reservoir


def _restore(trainer: Any, path: Path, arrays: dict[str, Any]) -> None:
    try:
        trainer.load_state_dict(arrays)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: does not fit this run ({e})") from None


def _check_free(run_dir: Path) -> None:
    if run_dir.exists() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        raise RunDirTaken(f"run directory {run_dir} already exists "
                          f"(pgt resume {run_dir} continues it)")


def _create(run_dir: Path, cfg: Config) -> None:
    _check_free(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(config_to_toml(cfg), encoding="utf-8")


def open_run_data(cfg: Config, run_dir: Path, *, resume: bool, arrays=None):
    """The run's Dataset, opened before any device is: a data error costs nothing.

    ``arrays`` (x, y, x_test, y_test) from the Python API, for a new run; a resumed or
    evaluated run reopens its file (an API run's own ``data.npz``) and refuses, in one
    line, one whose checksum differs from the one the run recorded.
    """
    from pgt._data import DataError, dataset_from_arrays, open_dataset

    if arrays is not None and not resume:
        data = dataset_from_arrays(*arrays, cfg=cfg.data, source=ARRAYS_FILE)
        return data
    data = open_dataset(cfg.data, base=run_dir if resume else None)
    saved = _read_data_info(run_dir) if resume else None
    if saved and saved.get("sha256") and saved["sha256"] != data.info.get("sha256"):
        raise DataError(f"data file {data.info.get('source')} changed since the run started "
                        f"(sha256 {saved['sha256'][:12]}… then, "
                        f"{str(data.info.get('sha256'))[:12]}… now); resume and eval need "
                        f"the file the run was trained on")
    return data


def _read_data_info(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / DATA_FILE
    if not path.is_file():
        return None
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise RunDirError(f"{path} is unreadable: the run's record of its data is damaged") from None


def _write_data(run_dir: Path, data: Any, arrays) -> None:
    """data.json (the dataset's provenance and preparation) and an API run's arrays."""
    import hashlib
    import json

    from pgt._checkpoint import _npz_bytes, _write_synced

    info = dict(getattr(data, "info", {}) or {})
    if arrays is not None:
        x, y, x_test, y_test = arrays
        named = {"x": x, "y": y, **({"x_test": x_test, "y_test": y_test} if x_test is not None else {})}
        blob = _npz_bytes({k: np.asarray(v) for k, v in named.items()})
        _write_synced(run_dir / ARRAYS_FILE, blob)
        info["sha256"] = hashlib.sha256(blob).hexdigest()
    if info:
        (run_dir / DATA_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")


def _with_data_path(cfg: Config, arrays) -> Config:
    """The config a new run saves: ``data.path`` absolute, so resume and eval find the
    file from anywhere; an API run's arrays as its own ``data.npz`` (relative: it moves
    with the run directory)."""
    import copy

    if arrays is None and (not cfg.data.path or Path(cfg.data.path).is_absolute()):
        return cfg
    cfg = copy.deepcopy(cfg)
    cfg.data.path = ARRAYS_FILE if arrays is not None else str(
        Path(cfg.data.path).expanduser().resolve())
    return cfg


def _object_reservoir(cfg: Config, reservoir: Any) -> Any:
    """An async context for a reservoir object handed in from Python."""
    import contextlib

    if reservoir is not None:
        return contextlib.nullcontext(reservoir)
    urls = cfg.reservoir.urls or [cfg.reservoir.url]
    if any(u.startswith(OBJECT_SCHEME) for u in urls):
        raise RunDirError(f"this run's reservoir ({urls[0]}) was an object handed to pgt.train "
                          f"in Python: resume or evaluate it from Python with reservoir=..., "
                          f"or give it a URL scheme (entry-point group pgt.reservoirs)")
    return None


async def run_training(cfg: Config, run_dir: Path, *, resume: bool,
                       progress: Progress | None = None, make_trainer: Any = None,
                       open_reservoir: Any = None, reservoir: Any = None, arrays=None,
                       signals: bool = True, start: str | None = None,
                       changes: dict[str, tuple[Any, Any]] | None = None) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir``; return its final metrics.

    ``make_trainer(cfg, reservoir)`` and ``open_reservoir(url, seed=, device=)``
    default to the real ``Trainer`` and ``pgt.backends.open_reservoir``; ``reservoir``
    is an already-open reservoir object to use instead of the configured URL, and
    ``arrays`` the (x, y, x_test, y_test) of a run on data in memory. ``signals``:
    whether SIGINT/SIGTERM stop the run cleanly (only possible in the main thread).
    Resuming: ``start`` ("step-N") picks the checkpoint (default: the newest valid
    one); ``changes`` ({key: (old, new)}, from ``resume_config``) are written to the
    run's config.toml and logged. The process holds the run's lock (pgt._lock)
    throughout. Raises RunDirError, CheckpointError, DataError (before any work), the
    backend's errors, RunDiverged, SuspendLimitReached and RunInterrupted (second
    signal), possibly inside an ExceptionGroup.
    """
    if resume:
        read_run_config(run_dir)   # a run directory at all
    else:
        _check_free(run_dir)
        cfg = _with_data_path(cfg, arrays)
    created = [d for d in (run_dir, *run_dir.parents) if not d.exists()]   # deepest first
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with RunLock(run_dir, RunDirTaken) as lock:
            return await _train_locked(cfg, run_dir, lock, resume=resume, progress=progress,
                                       make_trainer=make_trainer, open_reservoir=open_reservoir,
                                       reservoir=reservoir, arrays=arrays, signals=signals,
                                       start=start, changes=changes)
    finally:
        if created and not (run_dir / CONFIG_FILE).exists():
            with contextlib.suppress(OSError):   # it failed before it began: leave nothing
                for folder in created:
                    folder.rmdir()


async def _train_locked(cfg, run_dir, lock, *, resume, progress, make_trainer, open_reservoir,
                        reservoir, arrays, signals, start, changes) -> dict[str, Any]:
    skipped: list[str] = []
    checkpoint = None
    if resume:   # fail before any work
        checkpoint = _load_latest(run_dir, start=start, skipped=skipped)
        if checkpoint is None and _ever_saved(run_dir):
            raise CheckpointError(f"no checkpoint in {run_dir / 'checkpoints'}, though the "
                                  f"run saved some: refusing to start it over (pgt train "
                                  f"starts a new run)")
    real = make_trainer is None
    make_trainer, open_reservoir = _defaults(make_trainer, open_reservoir)
    data = open_run_data(cfg, run_dir, resume=resume, arrays=arrays) if real else None
    # Events from here on (the devices' own, as they open) wait in memory until the
    # run directory holds a run, then go to its events.jsonl; none reach the console.
    runlog = RunLog(run_dir.name, session=next_session(run_dir / EVENTS_FILE))
    try:
        if resume:
            runlog.attach(run_dir)
        return await _open_and_run(cfg, run_dir, lock, runlog, checkpoint, skipped, real,
                                   make_trainer, open_reservoir, reservoir, data, arrays,
                                   resume=resume, progress=progress, signals=signals,
                                   changes=changes)
    finally:
        runlog.close()


async def _open_and_run(cfg, run_dir, lock, runlog, checkpoint, skipped, real, make_trainer,
                        open_reservoir, reservoir, data, arrays, *, resume, progress, signals,
                        changes) -> dict[str, Any]:
    # The device opens before the run is created: a bad URL leaves nothing.
    from pgt._pool import open_devices   # imports the backends: only when a run starts
    context = _object_reservoir(cfg, reservoir) or open_devices(cfg, open_reservoir)
    async with context as device:
        trainer = make_trainer(cfg, device, data=data) if real else make_trainer(cfg, device)
        freeze_startup_objects()
        meta: dict[str, Any] = {}
        if checkpoint is not None:
            path, arrays_, meta = checkpoint
            _restore(trainer, path, arrays_)
        if not resume:
            _create(run_dir, cfg)
            _write_data(run_dir, data, arrays)
            runlog.attach(run_dir)
        elif changes:
            _write_atomic(run_dir / CONFIG_FILE, config_to_toml(cfg))
        progress = progress or Progress(silent=True)
        log = get_logger()
        if checkpoint is not None:
            log.info("run_resumed", step=trainer.step, checkpoint=path,
                     **({"changes": {k: list(v) for k, v in changes.items()}} if changes else {}),
                     **({"skipped": skipped} if skipped else {}),
                     **({"lock_taken_over": lock.previous} if lock.previous else {}))
            for reason in skipped:
                progress.notice(f"passed over a damaged checkpoint: {reason}")
            if skipped:
                progress.notice(f"resuming from {path}")
        run = _Run(cfg, run_dir, trainer, progress, meta)
        lock.started = True
        return await run.supervise(resumed=resume, signals=signals)


# Settings a resume may change: what the run does next, not what it has computed.
RESUMABLE = ("train.steps", "train.eval_every", "train.checkpoint_every",
             "train.checkpoint_seconds", "train.keep_checkpoints", "train.on_divergence",
             "train.log_every", "reservoir.url", "reservoir.urls", "reservoir.trial_timeout_s",
             "reservoir.suspend_limit_s", "reservoir.requires")


def resume_config(run_dir: Path, overrides=(), settings=None) -> tuple[Config, dict]:
    """The run's saved config with ``--set`` overrides and flag ``settings`` applied,
    and what changed ({key: (old, new)}). Raises ConfigError naming a setting a
    resume may not change (it would change what the run has computed)."""
    from pgt._config import ConfigError, leaves

    saved = read_run_config(run_dir)
    cfg = load_config(run_dir / CONFIG_FILE, overrides, settings=settings)
    before, after = dict(leaves(saved)), dict(leaves(cfg))
    changes = {k: (before[k], after[k]) for k in after if after[k] != before[k]}
    for key in changes:
        if key not in RESUMABLE:
            raise ConfigError(f"config: resume cannot change '{key}' ({before[key]!r} -> "
                              f"{after[key]!r}): it changes what the run computes; start a "
                              f"new run with pgt train (resume may change: "
                              f"{', '.join(RESUMABLE)})")
    return cfg, changes


def _ever_saved(run_dir: Path) -> bool:
    """Whether the run's events say it saved a checkpoint to resume from (a run
    stopped before its first one starts over on resume, to the same bits). The best
    checkpoint is not one: a resume never starts from it."""
    from pgt._logging import EVENTS_FILE, read_events

    path = run_dir / EVENTS_FILE
    return path.is_file() and any(e.get("event") == "checkpoint_saved" and not e.get("best")
                                  for e in read_events(path))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


async def evaluate_run(run_dir: Path, *, make_trainer: Any = None,
                       open_reservoir: Any = None, reservoir: Any = None) -> dict[str, Any]:
    """Test metrics of a run's latest checkpoint, and of its best-validation one when it
    has one (under "best"). Raises RunDirError, CheckpointError, DataError."""
    cfg = read_run_config(run_dir)
    checkpoint = _load_latest(run_dir)
    if checkpoint is None:
        raise CheckpointError(f"no checkpoint in {run_dir / 'checkpoints'}")
    path, arrays, _ = checkpoint
    best = best_checkpoint(run_dir)
    best_loaded = load_checkpoint(best) if best is not None else None
    real = make_trainer is None
    make_trainer, open_reservoir = _defaults(make_trainer, open_reservoir)
    data = open_run_data(cfg, run_dir, resume=True) if real else None
    from pgt._pool import open_devices   # imports the backends: only when a run starts
    context = _object_reservoir(cfg, reservoir) or open_devices(cfg, open_reservoir)
    async with context as device:
        trainer = make_trainer(cfg, device, data=data) if real else make_trainer(cfg, device)
        result: dict[str, Any] = {}
        if best_loaded is not None:
            _restore(trainer, best, best_loaded[0])
            result["best"] = {"step": trainer.step, "checkpoint": str(best),
                              **await trainer.evaluate()}
        _restore(trainer, path, arrays)
        result.update({"step": trainer.step, "checkpoint": str(path), **await trainer.evaluate()})
        if data is not None and data.task == "classification":
            from pgt._metrics import per_class_accuracy

            out, _ = await trainer.outputs(data.x_test)
            result["per_class"] = [
                (name, acc, n) for name, (acc, n) in
                zip(data.class_names, per_class_accuracy(out, data.y_test, data.n_classes))]
        result["task"] = data.task if data is not None else "classification"
        return result


async def predict_run(run_dir: Path, x, *, checkpoint: str = BEST, reservoir: Any = None,
                      open_reservoir: Any = None):
    """Predictions for samples ``x`` (in the data's own units and shape) through the
    ring with a run's ``best`` (falling back to the latest) or ``latest`` checkpoint:
    class labels, or regression values in the data's units."""
    from pgt._data import DataError, restore_targets, standardise_features
    from pgt._trainer import Trainer

    cfg = read_run_config(run_dir)
    path = best_checkpoint(run_dir) if checkpoint == BEST else None
    path = path or latest_checkpoint(run_dir)
    if path is None:
        raise CheckpointError(f"no checkpoint in {run_dir / 'checkpoints'}")
    state, _ = load_checkpoint(path)
    data = open_run_data(cfg, run_dir, resume=True)
    shape = tuple(data.info.get("shape", (0, data.n_features))[1:])
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2 or (shape and x.shape[1:] != shape and x[0].size != data.n_features):
        raise DataError(f"predict: samples of shape {x.shape[1:]}, the run was trained on "
                        f"samples of shape {shape}")
    xs = standardise_features(x, data.info)
    _, open_reservoir = _defaults(None, open_reservoir)
    from pgt._pool import open_devices

    context = _object_reservoir(cfg, reservoir) or open_devices(cfg, open_reservoir)
    async with context as device:
        trainer = Trainer(cfg, device, data=data)
        _restore(trainer, path, state)
        out, _ = await trainer.outputs(xs)
    if data.task == "regression":
        values = restore_targets(out, data.info)
        return values[:, 0] if values.shape[1] == 1 else values
    names = np.array(data.class_names)[out.argmax(axis=1)]
    return names.astype(np.int64) if data.info.get("label_type", "number") == "number" else names


_FROZEN = False


def freeze_startup_objects() -> None:
    """Once per process, after the trainer is built: move what is alive then
    (mostly the modules, classes and functions of numpy, scipy, scikit-learn, trio) out
    of the garbage collector's sight. A full collection otherwise walks those hundred
    thousand objects again and again during the run, tens of milliseconds in which the
    host's loop hands no work to any device. Garbage is collected first, so nothing
    that could be freed is kept; what is created later is collected as usual.
    """
    global _FROZEN
    if not _FROZEN:
        _FROZEN = True
        gc.collect()
        gc.freeze()


class _Run:
    """One session of a run: the loop, its schedule, its stop flag and its best
    validation checkpoint."""

    def __init__(self, cfg: Config, run_dir: Path, trainer: Any, progress: Progress,
                 meta: dict[str, Any]) -> None:
        self.cfg, self.run_dir, self.trainer, self.progress = cfg, run_dir, trainer, progress
        self.log = get_logger()
        self.stop_signal: str | None = None
        self.ring_evals = int(meta.get("ring_evals", 0))
        data = getattr(trainer, "data", None)
        self.task = getattr(data, "task", "classification")
        self.test: dict[str, Any] = dict(meta.get("last_eval", {}))
        if not self.test and "test_accuracy" in meta:   # checkpoints before last_eval
            self.test = {"step": meta.get("test_step", meta["step"]),
                         "test_accuracy": meta["test_accuracy"]}
        self.best: dict[str, Any] = dict(meta.get("best", {}))
        self.saved_step = trainer.step if meta else None
        self.elapsed0 = float(meta.get("elapsed_s", 0.0))
        self.t0 = self.saved_time = trio.current_time()
        self.step_scope = trio.CancelScope()   # the step in flight (cancelled to stop)
        self.before: dict[str, Any] | None = None   # a snapshot of the last completed step
        self.interrupted = False               # a second signal ended the run
        self.expired: str | None = None        # why the suspend limit ended the run

    async def supervise(self, *, resumed: bool, signals: bool = True) -> dict[str, Any]:
        """The loop beside a signal watcher; the first signal asks it to stop."""
        c = self.cfg
        self.log.info("run_start", resumed=resumed, step=self.trainer.step,
                      total_steps=self.trainer.total_steps, estimator=c.estimator.name,
                      k=c.estimator.k, sigma=c.estimator.sigma, optimizer=c.optimizer.name,
                      lr=c.optimizer.lr, seed=c.seed, device=c.device,
                      reservoir=c.reservoir.urls or c.reservoir.url, run_dir=str(self.run_dir),
                      data=c.data.path or c.data.name, task=self.task, version=_version(),
                      host=socket.gethostname(), pid=os.getpid(),
                      devices=_identities(getattr(self.trainer, "reservoir", None)))
        self.progress.start(self.trainer.step, self.trainer.total_steps, self.elapsed0)
        async with trio.open_nursery() as nursery:
            if signals:
                await nursery.start(self._watch_signals)
            nursery.start_soon(self._watch_device)
            result = await self._loop()
            nursery.cancel_scope.cancel()
        self.progress.finish(result_line(result))
        return result

    async def _watch_signals(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The first SIGINT/SIGTERM abandons the step in flight (a device wait, a
        suspension) and stops with the last completed step checkpointed; a second one
        stops at once."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if self.stop_signal is not None:
                    self.interrupted = True
                    if self.before is not None and self.saved_step != self.before["step"]:
                        self._save(state=self.before)   # the last completed step
                    self.log.warning("run_stop", reason="interrupted", signal=name,
                                     step=self.saved_step)
                    raise RunInterrupted(f"interrupted by {name} during step "
                                         f"{self.trainer.step + 1}; step {self.saved_step} "
                                         f"is checkpointed")
                self.stop_signal = name
                self.log.info("stop_requested", signal=name, step=self.trainer.step)
                self.progress.notice(f"{name}: stopping; the last completed step is "
                                     f"checkpointed (again to stop at once)")
                self.step_scope.cancel()

    async def _watch_device(self) -> None:
        """Log the run suspending while its device is quarantined, and resuming after;
        end it past ``reservoir.suspend_limit_s``.

        The trainer simply waits on the ring meanwhile; a backend without ``health``
        (the simulator) never suspends. A device pool's ``health`` is quarantined while
        none of its devices is in service (pgt._pool). While suspended, a
        ``run_still_suspended`` event every ``SUSPEND_REPORT_S`` says for how long and
        why; past the limit the step in flight is abandoned, the last completed step
        checkpointed, and the run ends with SuspendLimitReached (exit status 75).
        """
        health = getattr(getattr(self.trainer, "reservoir", None), "health", None)
        if health is None:
            return
        limit = self.cfg.reservoir.suspend_limit_s
        while True:
            await health.wait_until(quarantined=True)
            since = trio.current_time()
            self.log.warning("run_suspended", step=self.trainer.step, reason=health.reason,
                             limit_s=limit)
            self.progress.notice(f"device quarantined ({health.reason}); run suspended")
            while health.quarantined:
                waited = trio.current_time() - since
                wait = SUSPEND_REPORT_S if not limit else min(SUSPEND_REPORT_S, limit - waited)
                with trio.move_on_after(max(wait, 0.0)):
                    await health.wait_until(quarantined=False)
                if not health.quarantined:
                    break
                waited = trio.current_time() - since
                if limit and waited >= limit:
                    self.expired = (f"no device in service for {waited:.0f} s "
                                    f"(reservoir.suspend_limit_s = {limit:g}); "
                                    f"{_devices(self.cfg)}: {health.reason}")
                    self.log.error("run_suspend_limit", step=self.trainer.step,
                                   suspended_s=round(waited, 3), reason=health.reason)
                    self.step_scope.cancel()
                    return
                self.log.warning("run_still_suspended", step=self.trainer.step,
                                 suspended_s=round(waited, 3), reason=health.reason)
            self.log.warning("run_resumed_after_suspend", step=self.trainer.step,
                             suspended_s=round(trio.current_time() - since, 3))
            self.progress.notice("device recovered; run resumed")

    async def _loop(self) -> dict[str, Any]:
        trainer, train = self.trainer, self.cfg.train
        while not trainer.done and self.stop_signal is None and self.expired is None:
            before = self.before = self._snapshot()   # should this step not end
            with trio.CancelScope() as self.step_scope:
                try:
                    metrics = await trainer.train_step()
                except Diverged as error:
                    self._diverged(error, before)
                    continue
                if self.interrupted:   # a second signal: the watcher saved and logged
                    return {}
                self.ring_evals = int(metrics.get("ring_evals", self.ring_evals))
                if trainer.step % train.log_every == 0 or trainer.done or (
                        trainer.step % train.eval_every == 0):
                    twin = {k: metrics.pop(k) for k in [k for k in metrics if k.startswith("twin_")]}
                    self.log.info("step", **metrics)
                    if twin:   # the twin estimator's own measurements (pgt._estimators.Twin)
                        self.log.info("twin_fit", step=trainer.step, **twin)
                self.progress.step(metrics)
                if trainer.step % train.eval_every == 0 or trainer.done:
                    await self._evaluate()
            if self.interrupted:   # a second signal: the watcher saved and logged
                return {}
            if self.step_scope.cancelled_caught:   # a stop signal or the suspend limit
                self._save(state=before)
                break
            if self._checkpoint_due() or trainer.done:
                self._save()
        self.step_scope = trio.CancelScope()
        reason = ("finished" if trainer.done else "suspend_limit" if self.expired
                  else "signal")
        if self.saved_step != trainer.step and not self.expired:
            self._save()  # the last checkpoint always holds the last parameters
        self.log.info("run_stop", reason=reason, step=self.saved_step)
        if self.expired:
            raise SuspendLimitReached(f"{self.expired}; step {self.saved_step} is "
                                      f"checkpointed (pgt resume {self.run_dir} continues)")
        return {"reason": reason, "step": trainer.step, "total_steps": trainer.total_steps,
                "estimator": self.cfg.estimator.name, "ring_evals": self.ring_evals,
                "elapsed_s": self._elapsed(), "run_dir": str(self.run_dir), "task": self.task,
                **{k: v for k, v in self.test.items() if k.startswith(("test_", "val_"))},
                **({"best": self.best} if self.best else {})}

    def _snapshot(self) -> dict[str, Any]:
        """The trainer's state and the loop's own, copied: what a checkpoint of now holds."""
        return {"arrays": {k: np.array(v, copy=True) for k, v in self.trainer.state_dict().items()},
                "step": self.trainer.step, "ring_evals": self.ring_evals,
                "test": dict(self.test), "best": dict(self.best)}

    def _diverged(self, error: Any, before: dict[str, Any]) -> None:
        """A step went non-finite: roll back to the last checkpoint at half the learning
        rate, or stop; the non-finite state is never saved."""
        action = self.cfg.train.on_divergence
        factor = float(getattr(self.trainer, "lr_factor", 1.0)) / 2
        if action == "rollback" and factor >= 1 / 2**MAX_ROLLBACKS:
            found = _load_latest(self.run_dir, log=self.log)
            if found is None:   # nothing saved yet: the last completed step
                state, origin = before["arrays"], f"step {before['step']} (not yet saved)"
            else:
                state, origin = found[1], str(found[0])
            _restore(self.trainer, Path(origin), state)
            self.trainer.lr_factor = factor
            self.ring_evals = int(state.get("ring_evals", self.ring_evals))
            self.log.warning("run_rollback", step=error.step, what=error.what, to=origin,
                             to_step=self.trainer.step, lr_factor=factor)
            self.progress.notice(f"{error}; rolled back to {origin} at {factor:g} × the "
                                 f"learning rate")
            self.saved_step = None
            return
        self._restore_loop(before)
        self._save(state=before)
        self.log.error("run_stop", reason="diverged", step=error.step, what=error.what)
        spent = "" if action == "stop" else ", and its rollbacks are spent"
        raise RunDiverged(f"run diverged: {error}; step {before['step']} is checkpointed "
                          f"(train.on_divergence = {action!r}{spent})")

    def _restore_loop(self, before: dict[str, Any]) -> None:
        self.ring_evals, self.test, self.best = before["ring_evals"], before["test"], before["best"]

    def _checkpoint_due(self) -> bool:
        every, seconds = self.cfg.train.checkpoint_every, self.cfg.train.checkpoint_seconds
        if every and self.trainer.step % every == 0:
            return True
        # trio's clock is monotonic, and tests can drive it with autojump_clock.
        return trio.current_time() - self.saved_time >= seconds

    async def _evaluate(self) -> None:
        from pgt._metrics import PRIMARY, better

        metrics = await self.trainer.evaluate()
        self.test = {"step": self.trainer.step, **metrics}
        self.log.info("eval", ring_evals=self.ring_evals, **self.test)
        self.progress.eval(metrics)
        key = f"val_{PRIMARY[self.task][0]}"
        if key in metrics and better(self.task, metrics, self.best):
            # The test set is only reported beside it; it never chooses anything.
            self.best = {k: v for k, v in self.test.items()
                         if k == "step" or k.startswith(("val_", "test_"))}
            self._save(name=BEST)

    def _save(self, name: str | None = None, state: dict[str, Any] | None = None) -> None:
        """Checkpoint now, or ``state`` (a ``_snapshot`` of the last completed step)."""
        if state is not None:
            self._restore_loop(state)
        step = state["step"] if state is not None else self.trainer.step
        meta = {"run_id": self.run_dir.name, "total_steps": self.trainer.total_steps,
                "ring_evals": self.ring_evals, "elapsed_s": self._elapsed(),
                **({"test_accuracy": self.test["test_accuracy"],
                    "test_step": self.test["step"]} if "test_accuracy" in self.test else {}),
                "last_eval": _plain(self.test), "best": _plain(self.best)}
        arrays = state["arrays"] if state is not None else self.trainer.state_dict()
        path = save_checkpoint(self.run_dir, step, arrays, meta,
                               keep=self.cfg.train.keep_checkpoints, name=name)
        if name is None:
            self.saved_step, self.saved_time = step, trio.current_time()
        self.log.info("checkpoint_saved", step=step, path=path,
                      **({"best": True} if name else {}))

    def _elapsed(self) -> float:
        return self.elapsed0 + trio.current_time() - self.t0


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics as JSON values (for a checkpoint's meta.json)."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pgt")
    except PackageNotFoundError:
        return "unknown"


def _identities(reservoir: Any) -> list[dict[str, Any]]:
    """Each device's identity (what answered HELLO), or a simulator's name and sizes."""
    if reservoir is None:
        return []
    members = getattr(reservoir, "devices", None)
    if members is not None:
        return [d for member in members for d in _identities(member)]
    identity = getattr(reservoir, "identity", None)
    if isinstance(identity, dict):
        return [identity]
    info = getattr(reservoir, "info", None)
    if info is None:
        return [{"name": type(reservoir).__name__}]
    return [{"name": info.name, "n_inputs": info.n_inputs, "n_features": info.n_features,
             "max_batch": info.max_batch}]


def _devices(cfg: Config) -> str:
    urls = cfg.reservoir.urls or [cfg.reservoir.url]
    return ", ".join(urls)
