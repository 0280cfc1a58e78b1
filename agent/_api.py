"""The Python API: train on arrays in memory, with any reservoir object, from a script,
a notebook, a GUI's worker thread or a trio program.

    import pgt
    result = pgt.train(x, y, config={"estimator": {"name": "interface"}},
                       reservoir=my_ring, run_dir="runs/first")
    result.metrics["test_accuracy"], result.predict(x_new)

``train`` blocks until the run ends and works in the main thread or any other (it
runs its own trio loop; in the main thread Ctrl-C stops it cleanly after the current
step, as in the CLI). Inside a running trio program, ``await pgt.train_async(...)``
does the same without a second loop. A run from the API is an ordinary run
directory: its arrays are kept in it as ``data.npz``, so ``pgt resume``, ``pgt eval``
and ``pgt logs`` work on it. A run given a reservoir *object* (rather than a URL,
``config={"reservoir": {"url": ...}}``) records it as ``object://<name>``; resume or
evaluate it from Python with the object, or give the reservoir a URL scheme of its
own (entry-point group ``pgt.reservoirs``). Nothing here prints.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import trio

from pgt._checkpoint import BEST
from pgt._config import ConfigError, config_from
from pgt._runloop import (OBJECT_SCHEME, evaluate_run, predict_run, read_run_config,
                          run_training, train_new)
from pgt._schema import Config

__all__ = ["TrainResult", "evaluate", "load", "resume", "resume_async", "train", "train_async"]


@dataclasses.dataclass
class TrainResult:
    """A finished (or stopped) run: where it is, what it measured, and predictions.

    ``metrics``: the run's result — ``test_*`` and ``val_*`` of the last evaluation,
    ``best`` (the best-validation step and its metrics), ``ring_evals``, ``step``,
    ``reason`` ("finished" or "signal").
    """

    run_dir: Path
    metrics: dict[str, Any]
    config: Config
    reservoir: Any = dataclasses.field(default=None, repr=False)

    def predict(self, x, *, checkpoint: str = BEST) -> np.ndarray:
        """Labels (or regression values, in the data's units) of samples ``x`` through
        the ring, with the best-validation parameters (``checkpoint="latest"``: the last)."""
        return _run_sync(self.predict_async, x, checkpoint=checkpoint)

    async def predict_async(self, x, *, checkpoint: str = BEST) -> np.ndarray:
        return await predict_run(self.run_dir, x, checkpoint=checkpoint,
                                 reservoir=self.reservoir)


def train(x=None, y=None, *, config: Config | Mapping[str, Any] | None = None,
          reservoir: Any = None, x_test=None, y_test=None, run_dir: str | Path | None = None,
          signals: bool | None = None) -> TrainResult:
    """Train a run and return its ``TrainResult``.

    ``x`` (N, D) or (N, T, C) and ``y`` (N,) — class labels, or numbers with
    ``data.task = "regression"`` — are the data; without them the config's ``[data]``
    says (a named dataset or ``data.path``). ``x_test``/``y_test`` keep a test set of
    your own. ``config``: a Config or a mapping of tables and/or dotted keys.
    ``reservoir``: an object with ``info`` and ``async forward(u)`` (the Reservoir
    protocol) to use instead of ``reservoir.url``. ``run_dir``: the run directory
    (default: a new one under ``config.run_dir``). ``signals``: stop cleanly on
    SIGINT/SIGTERM (default: when called in the main thread).

    Raises ConfigError, DataError, RunDirError, CheckpointError or the reservoir's
    errors, each with a one-line message.
    """
    if signals is None:
        signals = threading.current_thread() is threading.main_thread()
    return _run_sync(train_async, x, y, config=config, reservoir=reservoir, x_test=x_test,
                     y_test=y_test, run_dir=run_dir, signals=signals)


async def train_async(x=None, y=None, *, config: Config | Mapping[str, Any] | None = None,
                      reservoir: Any = None, x_test=None, y_test=None,
                      run_dir: str | Path | None = None, signals: bool = False) -> TrainResult:
    """``train`` for a running trio program (signals are left to the program)."""
    cfg = config_from(config)
    if (x is None) != (y is None):
        raise ConfigError("pgt.train: give x and y together (or neither, to use config's [data])")
    if x is None and x_test is not None:
        raise ConfigError("pgt.train: x_test and y_test need x and y")
    if reservoir is not None:
        cfg = _object_config(cfg, reservoir)
    arrays = (x, y, x_test, y_test) if x is not None else None
    kwargs = {"reservoir": reservoir, "arrays": arrays, "signals": signals}
    if run_dir is not None:
        metrics = await run_training(cfg, Path(run_dir), resume=False, **kwargs)
    else:   # a new time-stamped name under config.run_dir
        metrics = await train_new(cfg, **kwargs)
    path = Path(metrics["run_dir"])
    return TrainResult(path, metrics, read_run_config(path), reservoir)


def resume(run_dir: str | Path, *, reservoir: Any = None,
           signals: bool | None = None) -> TrainResult:
    """Continue a run from its newest checkpoint (``pgt resume``), bit-exactly."""
    if signals is None:
        signals = threading.current_thread() is threading.main_thread()
    return _run_sync(resume_async, run_dir, reservoir=reservoir, signals=signals)


async def resume_async(run_dir: str | Path, *, reservoir: Any = None,
                       signals: bool = False) -> TrainResult:
    path = Path(run_dir)
    cfg = read_run_config(path)
    metrics = await run_training(cfg, path, resume=True, reservoir=reservoir, signals=signals)
    return TrainResult(path, metrics, cfg, reservoir)


def load(run_dir: str | Path, *, reservoir: Any = None) -> TrainResult:
    """An existing run, for ``predict`` (metrics: its newest checkpoint's evaluation)."""
    path = Path(run_dir)
    return TrainResult(path, evaluate(path, reservoir=reservoir), read_run_config(path),
                       reservoir)


def evaluate(run_dir: str | Path, *, reservoir: Any = None) -> dict[str, Any]:
    """Test (and best-validation) metrics of a run's checkpoints (``pgt eval``)."""
    return _run_sync(evaluate_run, Path(run_dir), reservoir=reservoir)


def _object_config(cfg: Config, reservoir: Any) -> Config:
    from pgt.backends import reservoir_problem

    if (problem := reservoir_problem(reservoir)) is not None:
        raise ConfigError(f"pgt.train: reservoir={type(reservoir).__name__} is not a "
                          f"reservoir ({problem}); it needs info and async forward(u)")
    cfg = dataclasses.replace(cfg, reservoir=dataclasses.replace(
        cfg.reservoir, url=f"{OBJECT_SCHEME}{reservoir.info.name}", urls=[]))
    return cfg


def _run_sync(fn, *args, **kwargs):
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return trio.run(lambda: fn(*args, **kwargs))
    raise RuntimeError("a blocking pgt call inside a running trio program: await its "
                       "async form there (pgt.train_async, pgt.resume_async, "
                       "TrainResult.predict_async)")
