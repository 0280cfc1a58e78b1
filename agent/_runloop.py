"""The run loop: train, log, evaluate, checkpoint, stop cleanly on a signal.

``run_training`` drives a ``Trainer`` through a configured run inside its run
directory (config.toml, events.jsonl, checkpoints/). Ctrl-C or SIGTERM once: the
current step finishes, a checkpoint is written, ``run_stop reason=signal`` is logged
and the function returns. A second signal raises ``RunInterrupted`` at once. A run
resumed from its latest checkpoint continues bit-exactly: the checkpoint holds the
trainer's complete ``state_dict()``.
"""

from __future__ import annotations

import datetime
import gc
import signal
from pathlib import Path
from typing import Any

import trio

from pgt._checkpoint import (CheckpointError, latest_checkpoint, load_checkpoint,
                               save_checkpoint)
from pgt._config import config_to_toml, load_config
from pgt._logging import configure_logging, get_logger
from pgt._progress import Progress, result_line
from pgt._schema import Config

__all__ = ["RunDirError", "RunInterrupted", "evaluate_run", "freeze_startup_objects",
           "new_run_dir", "read_run_config", "run_training"]

CONFIG_FILE = "config.toml"


class RunDirError(Exception):
    """A run directory is missing, incomplete or already taken (one-line message)."""


class RunInterrupted(Exception):
    """A second stop signal ended the run at once; the last checkpoint is kept."""


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


def read_run_config(run_dir: Path) -> Config:
    """The resolved configuration a run was started with. Raises RunDirError."""
    if not run_dir.is_dir():
        raise RunDirError(f"no run directory at {run_dir}")
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunDirError(f"no {CONFIG_FILE} in {run_dir}: not a run directory")
    return load_config(run_dir / CONFIG_FILE, [])


def _load_latest(run_dir: Path) -> tuple[Path, dict[str, Any], dict[str, Any]] | None:
    path = latest_checkpoint(run_dir)
    if path is None:
        return None
    arrays, meta = load_checkpoint(path)
    return path, arrays, meta


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
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirError(f"run directory {run_dir} already exists "
                          f"(pgt resume {run_dir} continues it)")


def _create(run_dir: Path, cfg: Config) -> None:
    _check_free(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(config_to_toml(cfg), encoding="utf-8")


async def run_training(cfg: Config, run_dir: Path, *, resume: bool,
                       progress: Progress | None = None, make_trainer: Any = None,
                       open_reservoir: Any = None) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir``; return its final metrics.

    ``make_trainer(cfg, reservoir)`` and ``open_reservoir(url, seed=, device=)``
    default to the real ``Trainer`` and ``backends.open_reservoir``. Raises
    RunDirError, CheckpointError (before any work), the backend's errors and
    RunInterrupted (second signal), the latter possibly inside an ExceptionGroup.
    """
    checkpoint = _load_latest(run_dir) if resume else None  # fail before any work
    if not resume:
        _check_free(run_dir)
    make_trainer, open_reservoir = _defaults(make_trainer, open_reservoir)
    # The device opens before the run directory exists: a bad URL leaves nothing.
    from pgt._pool import open_devices   # imports the backends: only when a run starts
    async with open_devices(cfg, open_reservoir) as reservoir:
        trainer = make_trainer(cfg, reservoir)
        freeze_startup_objects()
        meta: dict[str, Any] = {}
        if checkpoint is not None:
            path, arrays, meta = checkpoint
            _restore(trainer, path, arrays)
        if not resume:
            _create(run_dir, cfg)
        close_logging = configure_logging(run_dir)
        try:
            if checkpoint is not None:
                get_logger().info("run_resumed", step=trainer.step, checkpoint=path)
            run = _Run(cfg, run_dir, trainer, progress or Progress(quiet=True), meta)
            return await run.supervise(resumed=resume)
        finally:
            close_logging()


async def evaluate_run(run_dir: Path, *, make_trainer: Any = None,
                       open_reservoir: Any = None) -> dict[str, Any]:
    """Test metrics of a run's latest checkpoint. Raises RunDirError, CheckpointError."""
    cfg = read_run_config(run_dir)
    checkpoint = _load_latest(run_dir)
    if checkpoint is None:
        raise CheckpointError(f"no checkpoint in {run_dir / 'checkpoints'}")
    path, arrays, _ = checkpoint
    make_trainer, open_reservoir = _defaults(make_trainer, open_reservoir)
    from pgt._pool import open_devices   # imports the backends: only when a run starts
    async with open_devices(cfg, open_reservoir) as reservoir:
        trainer = make_trainer(cfg, reservoir)
        _restore(trainer, path, arrays)
        return {"step": trainer.step, "checkpoint": str(path), **await trainer.evaluate()}


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
    """One session of a run: the loop, its schedule and its stop flag."""

    def __init__(self, cfg: Config, run_dir: Path, trainer: Any, progress: Progress,
                 meta: dict[str, Any]) -> None:
        self.cfg, self.run_dir, self.trainer, self.progress = cfg, run_dir, trainer, progress
        self.log = get_logger()
        self.stop_signal: str | None = None
        self.ring_evals = int(meta.get("ring_evals", 0))
        self.test: dict[str, Any] = {}
        if "test_accuracy" in meta:
            self.test = {"step": meta.get("test_step", meta["step"]),
                         "test_accuracy": meta["test_accuracy"]}
        self.saved_step = trainer.step if meta else None
        self.elapsed0 = float(meta.get("elapsed_s", 0.0))
        self.t0 = self.saved_time = trio.current_time()

    async def supervise(self, *, resumed: bool) -> dict[str, Any]:
        """The loop beside a signal watcher; the first signal asks it to stop."""
        c = self.cfg
        self.log.info("run_start", resumed=resumed, step=self.trainer.step,
                      total_steps=self.trainer.total_steps, estimator=c.estimator.name,
                      k=c.estimator.k, sigma=c.estimator.sigma, optimizer=c.optimizer.name,
                      lr=c.optimizer.lr, seed=c.seed, device=c.device,
                      reservoir=c.reservoir.urls or c.reservoir.url, run_dir=str(self.run_dir))
        self.progress.start(self.trainer.step, self.trainer.total_steps, self.elapsed0)
        async with trio.open_nursery() as nursery:
            await nursery.start(self._watch_signals)
            nursery.start_soon(self._watch_device)
            result = await self._loop()
            nursery.cancel_scope.cancel()
        self.progress.finish(result_line(result))
        return result

    async def _watch_signals(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if self.stop_signal is not None:
                    self.log.warning("run_stop", reason="interrupted", signal=name,
                                     step=self.trainer.step)
                    raise RunInterrupted(f"interrupted by {name} during step "
                                         f"{self.trainer.step + 1}; the last "
                                         f"checkpoint is kept")
                self.stop_signal = name
                self.log.info("stop_requested", signal=name, step=self.trainer.step)
                self.progress.notice(f"{name}: stopping after this step "
                                     f"(again to stop at once)")

    async def _watch_device(self) -> None:
        """Log the run suspending while its device is quarantined, and resuming after.

        The trainer simply waits on the ring meanwhile; a backend without ``health``
        (the simulator) never suspends. A device pool's ``health`` is quarantined while
        none of its devices is in service (agent/_pool.py).
        """
        health = getattr(getattr(self.trainer, "reservoir", None), "health", None)
        if health is None:
            return
        while True:
            await health.wait_until(quarantined=True)
            since = trio.current_time()
            self.log.warning("run_suspended", step=self.trainer.step, reason=health.reason)
            self.progress.notice(f"device quarantined ({health.reason}); run suspended")
            await health.wait_until(quarantined=False)
            self.log.warning("run_resumed_after_suspend", step=self.trainer.step,
                             suspended_s=round(trio.current_time() - since, 3))
            self.progress.notice("device recovered; run resumed")

    async def _loop(self) -> dict[str, Any]:
        trainer, train = self.trainer, self.cfg.train
        while not trainer.done and self.stop_signal is None:
            metrics = await trainer.train_step()
            self.ring_evals = int(metrics.get("ring_evals", self.ring_evals))
            self.log.info("step", **metrics)
            self.progress.step(metrics)
            if trainer.step % train.eval_every == 0 or trainer.done:
                await self._evaluate()
            if self._checkpoint_due() or trainer.done:
                self._save()
        reason = "finished" if trainer.done else "signal"
        if self.saved_step != trainer.step:
            self._save()  # the last checkpoint always holds the last parameters
        self.log.info("run_stop", reason=reason, step=trainer.step)
        return {"reason": reason, "step": trainer.step, "total_steps": trainer.total_steps,
                "estimator": self.cfg.estimator.name, "ring_evals": self.ring_evals,
                "elapsed_s": self._elapsed(), "run_dir": str(self.run_dir),
                **{k: v for k, v in self.test.items() if k.startswith("test_")}}

    def _checkpoint_due(self) -> bool:
        every, seconds = self.cfg.train.checkpoint_every, self.cfg.train.checkpoint_seconds
        if every and self.trainer.step % every == 0:
            return True
        # trio's clock is monotonic, and tests can drive it with autojump_clock.
        return trio.current_time() - self.saved_time >= seconds

    async def _evaluate(self) -> None:
        metrics = await self.trainer.evaluate()
        self.test = {"step": self.trainer.step, **metrics}
        self.log.info("eval", ring_evals=self.ring_evals, **self.test)
        self.progress.eval(metrics)

    def _save(self) -> None:
        meta = {"run_id": self.run_dir.name, "total_steps": self.trainer.total_steps,
                "ring_evals": self.ring_evals, "elapsed_s": self._elapsed(),
                **({"test_accuracy": self.test["test_accuracy"],
                    "test_step": self.test["step"]} if self.test else {})}
        path = save_checkpoint(self.run_dir, self.trainer.step, self.trainer.state_dict(),
                               meta, keep=self.cfg.train.keep_checkpoints)
        self.saved_step, self.saved_time = self.trainer.step, trio.current_time()
        self.log.info("checkpoint_saved", step=self.trainer.step, path=path)

    def _elapsed(self) -> float:
        return self.elapsed0 + trio.current_time() - self.t0

