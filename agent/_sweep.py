"""``pgt sweep``: grids and budgeted searches of ordinary runs, on Ray Tune.

    pgt sweep SPEC.toml [--address ADDR] [--max-concurrent N] [--out DIR]

SPEC is TOML::

    [sweep]                       # optional
    seeds = [0, 1, 2]             # each trial trains once per seed; its metric is the mean
    metric = "val_accuracy"       # default: the task's validation metric (val_accuracy,
                                  # or val_nmse for regression)

    [base]                        # an ordinary run configuration, as pgt train reads it
    estimator.name = "pgt"

    [grid]                        # a full grid: every combination is one trial
    "optimizer.lr" = [0.003, 0.01]

    [search]                      # or a budgeted search (Optuna, through Ray Tune)
    trials = 12
    "estimator.sigma" = { low = 0.003, high = 0.03, log = true }
    "estimator.k" = [8, 16, 32]   # a list: one of these

Each trial is one run directory per seed under ``DIR/runs/`` (resumable with
``pgt resume``, readable with ``pgt logs`` / ``pgt plot``). Ray keeps its own state in
``DIR/ray``; the sweep's table (``DIR/sweep.md``), its CSV (``DIR/sweep.csv``) and the
best configuration (``DIR/best.toml``, which ``pgt train`` reads) are written from
the run directories, so they are the same whether the sweep ran once or was killed
and started again: a finished run is never trained again, an interrupted one resumes
from its own checkpoint, and a restarted search goes on from Ray's saved state.
Selection is on the validation metric; the test metric is shown beside it.

The engine (``run_on_ray``) also runs ``pgt report``. Ray is started in-process on
this machine's cores unless ``--address`` (or ``RAY_ADDRESS``) names a cluster; a run
whose ``reservoir.requires`` names a Ray custom resource runs only on a node that
has it (the node the ring is plugged into).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import itertools
import json
import math
import os
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgt._config import ConfigError, apply_overrides, config_from, config_to_toml

__all__ = ["SweepSpec", "Trial", "read_spec", "run_on_ray", "run_sweep", "train_or_resume",
           "trial_metrics"]

INSTALL_HINT = "pip install 'pgt[sweep]' (Ray Tune and Optuna)"
_SWEEP_KEYS = ("seeds", "metric", "name")
_SEARCH_KEYS = ("trials", "metric", "seed")
_RANGE_KEYS = ("low", "high", "log", "step")


class RayMissing(ConfigError):
    """Ray Tune is not installed (it is an optional extra)."""


@dataclass(frozen=True)
class Trial:
    """One configuration: dotted-key settings over the base, trained once per seed."""

    name: str
    settings: tuple[tuple[str, Any], ...]
    seeds: tuple[int, ...] = ()          # () : the base's own seed, one run
    base: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    overrides: tuple[str, ...] = ()      # ``key=value`` texts, as ``--set`` reads them, last

    def run_names(self) -> list[str]:
        return [f"{self.name}-s{s}" for s in self.seeds] if self.seeds else [self.name]

    def config(self, seed: int | None = None, runs: Path | None = None, run_name: str = ""):
        """The checked Config of one of this trial's runs."""
        table = {**copy.deepcopy(dict(self.base)), **dict(self.settings)}
        if runs is not None:
            table.update(run_dir=str(runs), run_name=run_name)
        if seed is not None:
            table["seed"] = seed
        return apply_overrides(config_from(table), self.overrides)


@dataclass
class SweepSpec:
    path: Path
    base: dict[str, Any]
    grid: dict[str, list] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)   # key -> list | {low, high, log, step}
    trials: int = 0
    search_seed: int = 0
    seeds: tuple[int, ...] = ()
    metric: str = ""
    digest: str = ""

    @property
    def kind(self) -> str:
        return "search" if self.search else "grid"


# -- the spec -------------------------------------------------------------------------


def read_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep spec; every configuration it can produce is checked too,
    so a typo is one ``ConfigError`` line before anything runs."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        table = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"sweep: no spec file at {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"sweep: cannot read {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"sweep: {path} is not valid TOML: {e}") from None
    where = f"sweep: {path.name}"
    unknown = set(table) - {"sweep", "base", "grid", "search"}
    if unknown:
        raise ConfigError(f"{where}: unknown table [{sorted(unknown)[0]}] (expected [sweep], "
                          f"[base], [grid] or [search])")
    for name in ("sweep", "base", "grid", "search"):
        if not isinstance(table.get(name, {}), dict):
            raise ConfigError(f"{where}: '{name}' must be a table ([{name}])")
    head, base = dict(table.get("sweep", {})), dict(table.get("base", {}))
    grid, search = dict(table.get("grid", {})), dict(table.get("search", {}))
    for key in head:
        if key not in _SWEEP_KEYS:
            raise ConfigError(f"{where}: unknown key sweep.{key} (expected one of "
                              f"{', '.join(_SWEEP_KEYS)})")
    if grid and search:
        raise ConfigError(f"{where}: a spec has a [grid] or a [search], not both")
    if not grid and not search:
        raise ConfigError(f"{where}: nothing to sweep: add a [grid] or a [search] table")
    for key in ("run_dir", "run_name"):
        if key in base or key in grid or key in search:
            raise ConfigError(f"{where}: '{key}' is set by the sweep (use --out)")
    data = base.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str) and data["path"]:
        data["path"] = str(Path(data["path"]).resolve())   # the trials run elsewhere
    spec = SweepSpec(path=path, base=base, digest=hashlib.sha256(raw).hexdigest())
    spec.seeds = _seeds(head.get("seeds", ()), where)
    trials = search.pop("trials", None)
    spec.search_seed = search.pop("seed", 0)     # the searcher's own seed
    if spec.seeds and "seed" in grid:
        raise ConfigError(f"{where}: 'seed' is swept and sweep.seeds is set: choose one")
    spec.metric = head.get("metric", search.pop("metric", ""))
    if not isinstance(spec.metric, str):
        raise ConfigError(f"{where}: metric must be a string, got {spec.metric!r}")
    _flat_keys(grid, "grid", where)
    if grid:
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}: grid.\"{key}\" must be a non-empty list of values")
        spec.grid = grid
    else:
        if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
            raise ConfigError(f"{where}: search.trials must be a positive integer, got {trials!r}")
        if not isinstance(spec.search_seed, int) or spec.search_seed < 0:
            raise ConfigError(f"{where}: search.seed must be a non-negative integer")
        spec.trials = trials
        _flat_keys(search, "search", where)
        if not search:
            raise ConfigError(f"{where}: [search] names no key to search")
        for key, dist in search.items():
            search[key] = _check_range(key, dist, where)
        spec.search = search
    # Every configuration the spec can produce is checked before anything runs.
    try:
        config_from(base)
        for trial in _probe_trials(spec):
            trial.config(spec.seeds[0] if spec.seeds else None, Path("runs"), "probe")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    if spec.metric and spec.metric not in _metric_names(config_from(base)):
        raise ConfigError(f"{where}: unknown metric {spec.metric!r} (one of "
                          f"{', '.join(_metric_names(config_from(base)))})")
    return spec


def _seeds(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        raise ConfigError(f"{where}: sweep.seeds must be a list of non-negative integers, "
                          f"got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}: sweep.seeds has a seed twice: {value!r}")
    return tuple(value)


def _flat_keys(table: dict[str, Any], name: str, where: str) -> None:
    """[grid] and [search] keys are dotted, quoted ("optimizer.lr"); an unquoted dotted
    key arrives as a nested table, which is flattened back here."""
    for key in list(table):
        value = table[key]
        if isinstance(value, dict) and not (name == "search" and _is_range(value)):
            del table[key]
            for sub, inner in _flatten(value, key):
                table[sub] = inner


def _flatten(table: dict[str, Any], prefix: str):
    for key, value in table.items():
        if isinstance(value, dict) and not _is_range(value):
            yield from _flatten(value, f"{prefix}.{key}")
        else:
            yield f"{prefix}.{key}", value


def _is_range(table: dict[str, Any]) -> bool:
    return bool(set(table) & {"low", "high"})


def _check_range(key: str, dist: Any, where: str) -> Any:
    if isinstance(dist, list):
        if not dist:
            raise ConfigError(f"{where}: search.\"{key}\" is an empty list")
        return dist
    if not isinstance(dist, dict):
        raise ConfigError(f"{where}: search.\"{key}\" must be a list of values or "
                          f"{{ low = ..., high = ... }}, got {dist!r}")
    extra = set(dist) - set(_RANGE_KEYS)
    if extra:
        raise ConfigError(f"{where}: search.\"{key}\" has unknown field {sorted(extra)[0]!r} "
                          f"(expected low, high, log, step)")
    low, high = dist.get("low"), dist.get("high")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    if not numbers or not math.isfinite(low) or not math.isfinite(high) or not low < high:
        raise ConfigError(f"{where}: search.\"{key}\" needs numbers low < high, got "
                          f"low={low!r}, high={high!r}")
    if dist.get("log") and low <= 0:
        raise ConfigError(f"{where}: search.\"{key}\" is log-scaled, so low must be above 0")
    return dist


def _probe_trials(spec: SweepSpec) -> Iterable[Trial]:
    if spec.grid:
        yield from grid_trials(spec)
        return
    for corner in itertools.product(*(_corners(d) for d in spec.search.values())):
        yield Trial("probe", tuple(zip(spec.search, corner)), spec.seeds, spec.base)


def _corners(dist: Any) -> list:
    if isinstance(dist, list):
        return dist
    integer = isinstance(dist["low"], int) and isinstance(dist["high"], int)
    return [dist["low"], dist["high"]] if integer else [float(dist["low"]), float(dist["high"])]


def grid_trials(spec: SweepSpec) -> list[Trial]:
    """The grid's trials in spec order (the last key varies fastest)."""
    keys = list(spec.grid)
    return [Trial(_name(keys, combo), tuple(zip(keys, combo)), spec.seeds, spec.base)
            for combo in itertools.product(*spec.grid.values())]


def _name(keys: Sequence[str], values: Sequence[Any], hashed: bool = False) -> str:
    """A run-directory-safe name from the settings: ``lr0.003-k8``."""
    short = [k.rsplit(".", 1)[-1] for k in keys]
    short = [s if short.count(s) == 1 else k.replace(".", "_") for s, k in zip(short, keys)]
    parts = []
    for key, value in zip(short, values):
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        parts.append(key + "".join(c if c.isalnum() or c in "._" else "_" for c in text))
    name = "-".join(parts)[:120]
    if hashed or len("-".join(parts)) > 120:
        exact = json.dumps([list(keys), [repr(v) for v in values]])
        name += "-" + hashlib.sha256(exact.encode()).hexdigest()[:6]
    return name


def _metric_names(cfg) -> list[str]:
    """The validation metrics a run of this configuration logs."""
    if _task(cfg) == "classification":
        return ["val_accuracy", "val_loss"]
    return ["val_nmse", "val_nrmse", "val_r2", "val_mse", "val_loss"]


def _task(cfg) -> str:
    """The run's task, as its data will give it (a file of one's own is read once)."""
    if cfg.data.task != "auto":
        return cfg.data.task
    if cfg.data.path:
        from pgt._data import DataError, open_dataset

        try:
            return open_dataset(cfg.data).task
        except DataError as e:
            raise ConfigError(str(e)) from None
    regression = cfg.data.name in ("narma10", "mackey_glass", "delayed_recall")
    return "regression" if regression else "classification"


def objective(spec: SweepSpec) -> tuple[str, str]:
    """(metric, "max" | "min") the sweep selects by: validation, never test."""
    cfg = config_from(spec.base)
    metric = spec.metric or ("val_accuracy" if _task(cfg) == "classification" else "val_nmse")
    larger = metric.endswith(("accuracy", "r2"))
    return metric, "max" if larger else "min"


# -- one trial's runs -----------------------------------------------------------------


def finished(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` has logged its ``run_stop reason=finished``."""
    from pgt._logging import EVENTS_FILE, read_events

    path = run_dir / EVENTS_FILE
    if not path.is_file():
        return False
    last = None
    for event in read_events(path):
        last = event
    return bool(last) and last.get("event") == "run_stop" and last.get("reason") == "finished"


def train_or_resume(cfg, run_dir: Path, *, signals: bool = False, wait_s: float = 0.0) -> str:
    """Train the run, resume it from its checkpoint, or leave a finished one alone;
    returns "trained", "resumed" or "reused". A run still locked by another process
    (a trial of a killed sweep, not yet gone) is waited for, up to ``wait_s``."""
    import trio

    from pgt._lock import held_by
    from pgt._runloop import CONFIG_FILE, run_training

    deadline = time.monotonic() + wait_s
    while held_by(run_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    if finished(run_dir):
        return "reused"
    resume = (run_dir / CONFIG_FILE).is_file()
    trio.run(lambda: run_training(cfg, run_dir, resume=resume, signals=signals))
    return "resumed" if resume else "trained"


def trial_metrics(run_dir: Path) -> dict[str, Any]:
    """What a finished run measured: the validation and test metrics at the evaluation
    its best checkpoint was chosen by (validation), the final test metrics, the steps,
    ring evaluations and training seconds (all sessions)."""
    from pgt._logging import EVENTS_FILE, dedupe, read_events
    from pgt._metrics import better

    events = dedupe(read_events(run_dir / EVENTS_FILE))
    evals = [e for e in events if e.get("event") == "eval"]
    if not evals:
        raise ValueError(f"{run_dir} has no evaluation")
    task = "regression" if "test_nmse" in evals[-1] else "classification"
    best: dict[str, Any] = {}
    for e in evals:
        if "val_loss" in e and better(task, e, best):
            best = e
    best = best or evals[-1]
    from pgt._checkpoint import latest_checkpoint, load_checkpoint

    seconds = float(load_checkpoint(latest_checkpoint(run_dir))[1].get("elapsed_s", 0.0))
    out = {k: v for k, v in best.items() if k.startswith(("val_", "test_"))}
    out.update({f"final_{k}": v for k, v in evals[-1].items() if k.startswith("test_")})
    out.update(best_step=best.get("step"), step=evals[-1].get("step"),
               ring_evals=evals[-1].get("ring_evals"), seconds=seconds)
    return out


def run_trial(trial: Trial, runs: Path) -> dict[str, Any]:
    """Train (or reuse, or resume) every seed of a trial, one after another; the mean
    of each metric over the seeds, and how each run went."""
    how, per_seed = [], []
    seeds = trial.seeds or (None,)
    for seed, name in zip(seeds, trial.run_names()):
        run_dir = runs / name
        how.append(train_or_resume(trial.config(seed, runs, name), run_dir, wait_s=120.0))
        per_seed.append(trial_metrics(run_dir))
    mean = {k: v for k, v in over_seeds(per_seed).items() if not k.endswith("_per_seed")}
    return {**mean, "how": how, "per_seed": per_seed}


def over_seeds(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Each metric that every seed's run has as a number: its mean over the seeds, and
    its values per seed (``<metric>_per_seed``)."""
    out: dict[str, Any] = {}
    for key in per_seed[0]:
        values = [p.get(key) for p in per_seed]
        if all(isinstance(v, (int, float)) for v in values):
            out[key] = sum(values) / len(values)
            out[f"{key}_per_seed"] = values
    return out


# -- the engine -----------------------------------------------------------------------


def _import_ray():
    try:
        import ray
        from ray import tune
    except ImportError:
        raise RayMissing(f"sweep: Ray Tune is not installed: {INSTALL_HINT}") from None
    return ray, tune


def _quiet_ray_environment() -> dict[str, str]:
    """Environment of the driver and every worker: no usage reporting (there is no
    network), no Tune loggers beyond ours, one BLAS thread per trial."""
    env = {"RAY_USAGE_STATS_ENABLED": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
           "RAY_AIR_NEW_OUTPUT": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S":
           "1000", "RAY_DEDUP_LOGS": "0", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for key, value in env.items():
        os.environ.setdefault(key, value)   # what the caller set wins
    return {k: os.environ[k] for k in env}


def _trial_resources(trial: Trial) -> dict[str, float]:
    """One CPU, and one unit of the custom resource the run requires (if any)."""
    cfg = trial.config()
    needs = {"CPU": 1.0}
    if cfg.reservoir.requires:
        needs[cfg.reservoir.requires] = 1.0
    return needs


def run_on_ray(trials: Sequence[Trial] | None, runs: Path, state: Path, *, name: str = "sweep",
               max_concurrent: int = 0, address: str | None = None,
               search: SweepSpec | None = None, on_result: Callable[[str, dict], None] | None = None
               ) -> dict[str, dict[str, Any]]:
    """Run the trials (a grid: every one of ``trials``; a search: ``search.trials`` of
    them, chosen by Optuna) on Ray Tune, ``max_concurrent`` at a time (0: as many as
    the cluster's CPUs hold), each as ``run_trial``. Ray's experiment state lives in
    ``state``: started again after the driver was killed, the sweep is restored from it
    (finished trials kept, unfinished ones run again, each resuming its own runs).
    Returns {trial name: its result}, as reported by the trials."""
    ray, tune = _import_ray()
    env = _quiet_ray_environment()
    runs, state = Path(runs).resolve(), Path(state).resolve()
    runs.mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    by_name = {t.name: t for t in trials or ()}
    base, seeds = (search.base, search.seeds) if search else ({}, ())
    cluster = address or os.environ.get("RAY_ADDRESS")
    driver = None if cluster else os.getpid()   # Ray in-process: the trials die with it

    def trainable(config: dict[str, Any]) -> None:
        if driver is not None:
            _die_with(driver)
        if "trial" in config:
            trial = by_name[config["trial"]]
        else:
            keys = sorted(config["set"])
            values = [config["set"][k] for k in keys]
            trial = Trial(_name(keys, values, hashed=True), tuple(zip(keys, values)), seeds, base)
        start = time.perf_counter()
        result = run_trial(trial, runs)
        node = ray.get_runtime_context().get_node_id()
        tune.report({**{k: v for k, v in result.items() if k != "per_seed"},
                     "trial_name": trial.name, "settings": json.dumps(list(trial.settings)),
                     "node_id": node, "how": ",".join(result["how"]),
                     "wall_s": time.perf_counter() - start})

    if search:
        metric, mode = objective(search)
        space = {"set": {k: _tune_space(tune, d) for k, d in search.search.items()}}
        resources = _trial_resources(Trial("", (), (), base))
        with_resources = tune.with_resources(trainable, resources)
    else:
        metric, mode = None, None
        space = {"trial": tune.grid_search([t.name for t in trials])}
        with_resources = tune.with_resources(
            trainable, lambda config: _trial_resources(by_name[config["trial"]]))

    if not ray.is_initialized():
        import logging

        # "local": a Ray of this process's own, even where `ray start` left a cluster
        # running on this machine (Ray would join that one); --address auto joins it
        ray.init(address=cluster or "local",
                 include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 configure_logging=True, runtime_env={"env_vars": env})
    callbacks = [_Progress(on_result)] if on_result else []
    run_config = tune.RunConfig(name=name, storage_path=str(state), verbose=0,
                                callbacks=callbacks,
                                failure_config=tune.FailureConfig(max_failures=0))
    path = state / name
    if tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), trainable=with_resources,
                                   resume_unfinished=True, resume_errored=True,
                                   param_space=space)
    else:
        tune_config = tune.TuneConfig(
            metric=metric, mode=mode, num_samples=search.trials if search else 1,
            max_concurrent_trials=max_concurrent or None,
            search_alg=_optuna(tune, search, metric, mode) if search else None,
            trial_dirname_creator=lambda t: f"trial_{t.trial_id}")
        tuner = tune.Tuner(with_resources, param_space=space, tune_config=tune_config,
                           run_config=run_config)
    grid = tuner.fit()
    out: dict[str, dict[str, Any]] = {}
    for result in grid:
        metrics = result.metrics or {}
        if result.error is not None or "trial_name" not in metrics:
            label = (result.config or {}).get("trial") or json.dumps(
                (result.config or {}).get("set", {}), sort_keys=True)
            out[str(label)] = {"error": _one_line(result.error)}
            continue
        out[metrics["trial_name"]] = dict(metrics)
    return out


def _die_with(pid: int) -> None:
    """End this worker process within half a second of the process ``pid`` (the
    sweep's driver): a killed sweep leaves no trial training on, holding its run's
    lock, while the sweep is started again. The run keeps its last checkpoint."""
    import threading

    def watch() -> None:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass
            time.sleep(0.5)

    threading.Thread(target=watch, name="pgt-driver-watch", daemon=True).start()


def _one_line(error: BaseException | None) -> str:
    text = str(error or "no result").strip().splitlines()
    return text[-1] if text else type(error).__name__


def _tune_space(tune, dist: Any):
    if isinstance(dist, list):
        return tune.choice(dist)
    low, high, log, step = dist["low"], dist["high"], dist.get("log", False), dist.get("step")
    if isinstance(low, int) and isinstance(high, int) and not isinstance(step, float):
        return (tune.lograndint if log else tune.randint)(low, high + 1) if not step else \
            tune.qrandint(low, high, step)
    if step:
        return (tune.qloguniform if log else tune.quniform)(float(low), float(high), float(step))
    return (tune.loguniform if log else tune.uniform)(float(low), float(high))


def _optuna(tune, spec: SweepSpec, metric: str, mode: str):
    try:
        import optuna
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise RayMissing(f"sweep: a [search] needs Optuna: {INSTALL_HINT}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=spec.search_seed)
    return OptunaSearch(metric=metric, mode=mode, sampler=sampler)


class _Progress:
    """A Tune callback that hands each trial's result to the CLI as it arrives."""

    def __new__(cls, on_result):
        from ray.tune import Callback

        class Reporter(Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                if "trial_name" in result:
                    on_result(result["trial_name"], result)

            def on_trial_error(self, iteration, trials, trial, **info):
                on_result(str(trial.config.get("trial", trial.trial_id)), {"error": True})

        return Reporter()


# -- the sweep ------------------------------------------------------------------------


def run_sweep(spec_path: str | Path, out: str | Path | None = None, *, max_concurrent: int = 0,
              address: str | None = None, on_result=None) -> dict[str, Any]:
    """Run the spec's sweep into ``out`` (default ``sweeps/<spec name>``); write the
    table, the CSV and the best configuration. Returns {"rows", "table", "best", ...}."""
    spec = read_spec(spec_path)
    _import_ray()
    out = Path(out) if out is not None else Path("sweeps") / spec.path.stem
    out.mkdir(parents=True, exist_ok=True)
    marker = out / "sweep.json"
    if marker.is_file():
        saved = json.loads(marker.read_text(encoding="utf-8"))
        if saved.get("digest") != spec.digest:
            raise ConfigError(f"sweep: {out} holds a sweep of another spec ({saved.get('spec')}); "
                              f"use another --out, or the spec it ran")
    else:
        marker.write_text(json.dumps({"spec": str(spec.path.resolve()), "digest": spec.digest,
                                      "kind": spec.kind}, indent=1) + "\n", encoding="utf-8")
    start = time.perf_counter()
    trials = grid_trials(spec) if spec.grid else None
    results = run_on_ray(trials, out / "runs", out / "ray", max_concurrent=max_concurrent,
                         address=address, search=spec if spec.search else None,
                         on_result=on_result)
    wall = time.perf_counter() - start
    rows = _rows(spec, trials, results, out / "runs")
    metric, mode = objective(spec)
    text = table(rows, metric)
    (out / "sweep.md").write_text(_document(spec, rows, metric, mode, text), encoding="utf-8")
    (out / "sweep.csv").write_text(_csv(rows, metric), encoding="utf-8")
    best = next((r for r in rows if "error" not in r), None)
    if best is not None:
        (out / "best.toml").write_text(_best_toml(spec, best), encoding="utf-8")
    return {"rows": rows, "table": text, "metric": metric, "mode": mode, "wall_s": wall,
            "out": out, "best": best, "results": results}


def _rows(spec: SweepSpec, trials, results, runs: Path) -> list[dict[str, Any]]:
    """One row per trial, read back from its run directories (not from Ray), sorted
    by the objective, best first; trials that failed come last."""
    metric, mode = objective(spec)
    if trials is None:   # a search: the trials are the ones Ray ran
        trials = []
        for name, result in results.items():
            if "settings" in result:
                trials.append(Trial(name, tuple(tuple(s) for s in json.loads(result["settings"])),
                                    spec.seeds, spec.base))
    rows = []
    for trial in trials:
        row: dict[str, Any] = {"trial": trial.name, "settings": dict(trial.settings),
                               "node_id": results.get(trial.name, {}).get("node_id", "")}
        try:
            per_seed = [trial_metrics(runs / n) for n in trial.run_names()
                        if finished(runs / n)]
            if len(per_seed) < len(trial.run_names()):
                raise ValueError(results.get(trial.name, {}).get("error", "did not finish"))
        except (ValueError, OSError) as e:
            row["error"] = str(e)
            rows.append(row)
            continue
        row.update(over_seeds(per_seed))
        rows.append(row)
    sign = -1 if mode == "max" else 1
    errors = [r for r in rows if "error" in r]
    good = sorted((r for r in rows if "error" not in r), key=lambda r: (sign * r[metric], r["trial"]))
    return good + errors


def _fmt(metric: str, value: float) -> str:
    if metric.endswith("accuracy"):
        return f"{100 * value:.2f}"
    return f"{value:.4g}"


def table(rows: list[dict[str, Any]], metric: str) -> str:
    """The markdown table: settings, the objective (mean and per seed), the test metric
    of the same parameters, and the final test metric. No times, so that a sweep run
    in one go and one killed and started again give the same table."""
    test = metric.replace("val_", "test_", 1) if metric.startswith("val_") else metric
    unit = " %" if metric.endswith("accuracy") else ""
    keys = list(rows[0]["settings"]) if rows else []
    head = ["rank", *keys, f"{metric}{unit} (mean; per seed)", f"{test}{unit} at best val",
            f"final {test}{unit}", "ring evals"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, row in enumerate(rows, 1):
        cells = [str(i), *(str(row["settings"].get(k, "")) if not isinstance(
            row["settings"].get(k), float) else f"{row['settings'][k]:.4g}" for k in keys)]
        if "error" in row:
            cells += [f"failed: {row['error']}", "", "", ""]
        else:
            seeds = row.get(f"{metric}_per_seed", [])
            per = f" ({', '.join(_fmt(metric, v) for v in seeds)})" if len(seeds) > 1 else ""
            cells += [_fmt(metric, row[metric]) + per, _fmt(test, row.get(test, float("nan"))),
                      _fmt(test, row.get(f"final_{test}", float("nan"))),
                      f"{row.get('ring_evals', 0):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _document(spec, rows, metric, mode, text) -> str:
    what = (f"a grid of {len(rows)} trials" if spec.grid
            else f"a search of {spec.trials} trials (Optuna TPE, seed {spec.search_seed})")
    seeds = f", each over seeds {', '.join(map(str, spec.seeds))}" if spec.seeds else ""
    return (f"# pgt sweep: {spec.path.name}\n\n{what}{seeds}; selected by {metric} "
            f"({mode}imum, the validation part; the test part is shown, never used).\n\n"
            f"{text}\n")


def _csv(rows: list[dict[str, Any]], metric: str) -> str:
    keys = sorted({k for r in rows for k in r["settings"]})
    numbers = sorted({k for r in rows for k, v in r.items()
                      if isinstance(v, (int, float)) and not k.endswith("_per_seed")})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["rank", "trial", *keys, *numbers, "node_id", "error"])
    for i, row in enumerate(rows, 1):
        writer.writerow([i, row["trial"], *(row["settings"].get(k, "") for k in keys),
                         *(repr(row[k]) if isinstance(row.get(k), float) else row.get(k, "")
                           for k in numbers), row.get("node_id", ""), row.get("error", "")])
    return buffer.getvalue()


def _best_toml(spec: SweepSpec, best: dict[str, Any]) -> str:
    """The best trial's configuration as a file ``pgt train`` reads (its first seed)."""
    from pgt._schema import Config

    seed = spec.seeds[0] if spec.seeds else None
    cfg = Trial(best["trial"], tuple(best["settings"].items()), spec.seeds, spec.base).config(
        seed, Path(Config().run_dir), "")
    return (f"# the best trial of {spec.path.name}: {best['trial']}\n"
            f"# {json.dumps(best['settings'])}\n" + config_to_toml(cfg))
