"""Datasets: the ones that ship, a lab's own files or arrays, seeded splits, batches.

``open_dataset(cfg.data)`` gives a run its ``Dataset``: a named one (the digits sets
and the generated tasks of ``pgt._tasks``) or, when ``data.path`` is set, a ``.csv``
or ``.npz`` file (``pgt._files``). Arrays handed to the Python API take the file
path's route (``dataset_from_arrays``). Every split is seeded: a test part (unless the
file keeps its own), then a validation part carved from what is left, stratified by
class for classification, chronological for the generated time series, random for
other regression data. Features of files, arrays and time series are standardised
with the training part's statistics only; regression targets too (the model learns
them in standard units, ``predict`` gives them back in the file's). The digits sets
are pixel intensities in [0, 1] and stay as they are.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DATASETS", "DataError", "Dataset", "batch_indices", "dataset_from_arrays",
           "load_dataset", "open_dataset", "split", "validate"]


class DataError(ValueError):
    """A dataset is missing or has the wrong shape or values (one-line message)."""


CLASSIFICATION, REGRESSION = "classification", "regression"


@dataclass(frozen=True)
class Dataset:
    """Features as float64 (N, D) and labels: integer classes (N,) for classification,
    float targets (N, m) for regression.

    ``tokens``: how many equal tokens a sequence model reads each row as (D must be
    a multiple); 1 for data that is not a sequence. ``x_val``/``y_val``: the
    validation part, None without one. ``info``: where the data came from and how it
    was prepared (JSON-ready; saved with the run as data.json).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int                  # 0 for regression
    tokens: int = 1
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    task: str = CLASSIFICATION
    class_names: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def n_outputs(self) -> int:
        """Classes, or regression outputs: the width of the model's head."""
        return self.n_classes if self.task == CLASSIFICATION else self.y_train.shape[1]

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of "train", "val" or "test"."""
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


DATASETS = ("digits", "digit_rows", "delayed_parity", "narma10", "mackey_glass",
            "delayed_recall")
_SERIES = ("narma10", "mackey_glass", "delayed_recall")


# -- the named datasets ---------------------------------------------------------------


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    # scikit-learn ships the 1,797 8x8 handwritten digits inside the package.
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data / 16.0, digits.target


def validate(x, y, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Check a named dataset's arrays; raise DataError with a one-line reason."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2:
        raise DataError(f"dataset {name!r}: features must be 2-D (samples, features), got shape {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"dataset {name!r}: labels must have shape ({x.shape[0]},), got {y.shape}")
    if not np.isfinite(x).all():
        raise DataError(f"dataset {name!r}: features contain NaN or infinity")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise DataError(f"dataset {name!r}: labels must be non-negative integers")
    return x.astype(np.float64), y.astype(np.int64)


def split(x, y, test_fraction: float, seed: int, name: str = "data", tokens: int = 1,
          val_fraction: float = 0.0) -> Dataset:
    """A seeded, stratified train/(validation/)test split of integer-labelled data."""
    x, y = validate(x, y, name)
    rest, test = _stratified(y, test_fraction, [seed, 0x5B117])
    train, val = _stratified_subset(y, rest, val_fraction, [seed, 0x7A1])
    n_classes = int(y.max()) + 1
    return Dataset(x[train], y[train], x[test], y[test], n_classes, tokens,
                   *((x[val], y[val]) if val is not None else (None, None)),
                   class_names=tuple(str(c) for c in range(n_classes)),
                   info={"source": name, "format": "builtin", "task": CLASSIFICATION,
                         "shape": list(x.shape), **_counts(train, val, test)})


def load_dataset(name: str, test_fraction: float, split_seed: int, options=None,
                 val_fraction: float = 0.0) -> Dataset:
    """Load the named dataset ``name`` and split it.

    "digits": 64 pixels per image; "digit_rows": the same images read as a sequence
    of 8 rows of 8 pixels; "delayed_parity": generated bits (pgt._tasks), one per
    token; "narma10" and "mackey_glass": one-step-ahead prediction of generated
    series from a window of ``window`` past values (regression); "delayed_recall":
    the input ``delay`` steps back (regression; with ``data.continuous`` across
    samples). ``options`` is a DataConfig (seq_len, delay, parity_bits, window, length).
    """
    from pgt._schema import DataConfig

    o = options if options is not None else DataConfig()
    if name in ("digits", "digit_rows"):
        x, y = _load_digits()
        return split(x, y, test_fraction, split_seed, name,
                     tokens=8 if name == "digit_rows" else 1, val_fraction=val_fraction)
    if name == "delayed_parity":
        from pgt._tasks import delayed_parity

        try:
            x, y = delayed_parity(o.seq_len, o.delay, o.parity_bits, split_seed)
        except ValueError as e:
            raise DataError(str(e)) from None
        return split(x, y, test_fraction, split_seed, name, tokens=o.seq_len,
                     val_fraction=val_fraction)
    if name in _SERIES:
        return _series(name, o, test_fraction, val_fraction, split_seed)
    raise DataError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")


def _series(name: str, o, test_fraction: float, val_fraction: float, seed: int) -> Dataset:
    """A generated time series as windows -> next value, split in time order."""
    from pgt import _tasks

    try:
        if name == "delayed_recall":
            x, y = _tasks.delayed_recall_task(o.length, o.window, seed, delay=o.delay)
        else:
            make = _tasks.narma10_task if name == "narma10" else _tasks.mackey_glass_task
            x, y = make(length=o.length, window=o.window, seed=seed)
    except ValueError as e:
        raise DataError(f"dataset {name!r}: {e}") from None
    n = len(x)
    n_test = max(1, round(n * test_fraction))
    n_val = round((n - n_test) * val_fraction) if val_fraction > 0 else 0
    if val_fraction > 0:
        n_val = max(1, n_val)
    n_train = n - n_test - n_val
    if n_train < 2:
        raise DataError(f"dataset {name!r}: {n} samples leave {n_train} for training; "
                        f"raise data.length or lower data.test_fraction/val_fraction")
    order = np.arange(n)
    train, val, test = order[:n_train], order[n_train:n - n_test], order[n - n_test:]
    raw_info = {"source": name, "format": "builtin", "shape": list(x.shape),
                "window": o.window, "length": o.length, "split": "chronological"}
    return _prepare(x, y[:, None], REGRESSION, (), train, val if n_val else None, test,
                    tokens=o.window, info=raw_info)


# -- a lab's own data ---------------------------------------------------------------------


def open_dataset(cfg, base: Path | None = None) -> Dataset:
    """The run's dataset from its ``[data]`` table (a DataConfig).

    ``data.path`` set: that file (a relative path is taken from ``base``, the run
    directory, when the file is there, else from the working directory); otherwise
    the named dataset. Raises DataError (one line).
    """
    if not cfg.path:
        dataset = load_dataset(cfg.name, cfg.test_fraction, cfg.split_seed, cfg,
                               val_fraction=cfg.val_fraction)
        if cfg.task not in ("auto", dataset.task):
            raise DataError(f"dataset {cfg.name!r} is a {dataset.task} task, but data.task "
                            f"is {cfg.task!r}")
        return dataset
    from pgt._files import file_sha256, read_data_file

    path = resolve_data_path(cfg.path, base)
    raw = read_data_file(path, cfg.label)
    info = {"source": str(path.resolve()), "format": path.suffix.lower().lstrip("."),
            "sha256": file_sha256(path), "shape": list(raw.x.shape),
            **({"columns": list(raw.columns)} if raw.columns else {})}
    return _from_raw(raw, cfg, str(path), info)


def resolve_data_path(path: str, base: Path | None) -> Path:
    candidate = Path(path).expanduser()
    if not candidate.is_absolute() and base is not None and (base / candidate).exists():
        return base / candidate
    return candidate


def dataset_from_arrays(x, y, x_test=None, y_test=None, cfg=None,
                        source: str = "arrays") -> Dataset:
    """A Dataset from arrays in memory, checked and prepared as a data file would be."""
    from pgt._files import RawData, _features, _labels, _same_length
    from pgt._schema import DataConfig

    cfg = cfg if cfg is not None else DataConfig()
    where = Path(source)
    x_, y_ = _features(np.asarray(x), "x", where), _labels(np.asarray(y), "y", where)
    _same_length(x_, y_, ("x", "y"), where)
    xt = yt = None
    if (x_test is None) != (y_test is None):
        raise DataError(f"data {source}: give x_test and y_test together, or neither")
    if x_test is not None:
        xt, yt = _features(np.asarray(x_test), "x_test", where), _labels(np.asarray(y_test), "y_test", where)
        _same_length(xt, yt, ("x_test", "y_test"), where)
        if xt.shape[1:] != x_.shape[1:]:
            raise DataError(f"data {source}: 'x_test' has samples of shape {xt.shape[1:]}, "
                            f"'x' of shape {x_.shape[1:]}")
    info = {"source": source, "format": "arrays", "shape": list(x_.shape)}
    return _from_raw(RawData(x_, y_, xt, yt), cfg, source, info)


def _from_raw(raw, cfg, where: str, info: dict[str, Any]) -> Dataset:
    """Interpret the labels, split and standardise a file's (or arrays') data."""
    task = _task(raw, cfg.task, where)
    numeric = raw.y.dtype.kind in "biuf" or _all_parse(raw.y, int)
    info = {**info, "label_type": "number" if numeric else "text"}
    if task == CLASSIFICATION:
        names, y = _classes(raw.y, where, "y")
        y_test = None if raw.y_test is None else _known_classes(raw.y_test, names, where)
    else:
        y = _targets(raw.y, where, "y")
        y_test = None if raw.y_test is None else _targets(raw.y_test, where, "y_test")
        names = ()
    n = len(raw.x)
    if raw.x_test is None:
        if task == CLASSIFICATION:
            rest, test = _stratified(y, cfg.test_fraction, [cfg.split_seed, 0x5B117], where,
                                     names, need_val=cfg.val_fraction > 0)
        else:
            rest, test = _random(n, cfg.test_fraction, [cfg.split_seed, 0x5B117])
        x_all, y_all = raw.x, y
    else:   # the file's own test part: appended after the training rows
        rest, test = np.arange(n), np.arange(n, n + len(raw.x_test))
        x_all, y_all = np.concatenate([raw.x, raw.x_test]), np.concatenate([y, y_test])
    if task == CLASSIFICATION:
        train, val = _stratified_subset(y_all, rest, cfg.val_fraction, [cfg.split_seed, 0x7A1],
                                        where, names)
    else:
        train, val = _random_subset(rest, cfg.val_fraction, [cfg.split_seed, 0x7A1])
    if len(train) < 2:
        raise DataError(f"data {where}: the split leaves {len(train)} training sample(s); "
                        f"lower data.test_fraction or data.val_fraction")
    tokens = raw.x.shape[1] if raw.x.ndim == 3 else 1
    return _prepare(x_all, y_all, task, names, train, val, test, tokens=tokens,
                    info={**info, "test_from": "file" if raw.x_test is not None else "split"})


def _task(raw, asked: str, where: str) -> str:
    """The task the labels and ``data.task`` ("auto", "classification", "regression") give."""
    y, label = raw.y, raw.label
    kind = y.dtype.kind
    if asked == REGRESSION:
        if kind == "U" and not _all_parse(y, float):
            i = next(i for i, v in enumerate(y.ravel()) if not _parses(v, float))
            raise DataError(f"data {where}: {raw.locate(i)}: label {str(y.ravel()[i])!r} is "
                            f"not a number; data.task = \"regression\" needs numeric labels")
        return REGRESSION
    if y.ndim != 1:
        raise DataError(f"data {where}: labels of shape {y.shape} are several numbers per "
                        f"sample; set data.task = \"regression\" to fit them")
    fractional = (kind == "f" and not np.all(y == np.round(y))) or (
        kind == "U" and not _all_parse(y, int) and _all_parse(y, float))
    if fractional and asked != CLASSIFICATION:
        raise DataError(f"data {where}: the labels ({label!r}) are fractional numbers; set "
                        f"data.task = \"regression\" to fit them, or give class labels")
    if fractional and kind == "f":
        raise DataError(f"data {where}: class labels must be integers or text, got "
                        f"fractional numbers in {label!r}")
    return CLASSIFICATION


def _parses(value, kind) -> bool:
    try:
        kind(str(value))
        return True
    except ValueError:
        return False


def _all_parse(y: np.ndarray, kind) -> bool:
    return y.dtype.kind == "U" and all(_parses(v, kind) for v in y.ravel())


def _classes(y: np.ndarray, where: str, name: str) -> tuple[tuple[str, ...], np.ndarray]:
    """Class names (sorted: numerically for numbers, else as text) and indices."""
    if y.dtype.kind == "U" and _all_parse(y, int):
        y = np.array([int(v) for v in y])
    if y.dtype.kind == "f":
        y = y.astype(np.int64)
    values, index = np.unique(y, return_inverse=True)
    if len(values) < 2:
        raise DataError(f"data {where}: {name!r} has a single class ({values[0]!r}); "
                        f"classification needs at least two")
    return tuple(str(v) for v in values), index.astype(np.int64)


def _known_classes(y: np.ndarray, names: tuple[str, ...], where: str) -> np.ndarray:
    if y.dtype.kind == "f":
        y = y.astype(np.int64)
    lookup = {name: i for i, name in enumerate(names)}
    out = np.empty(len(y), dtype=np.int64)
    for i, v in enumerate(y):
        text = str(int(v)) if y.dtype.kind in "iub" else str(v)
        if text not in lookup:
            raise DataError(f"data {where}: 'y_test' has class {text!r} (sample {i}), which "
                            f"the training labels never have")
        out[i] = lookup[text]
    return out


def _targets(y: np.ndarray, where: str, name: str) -> np.ndarray:
    if y.dtype.kind == "U":
        out = np.empty(y.shape)
        for i, v in enumerate(y.ravel()):
            try:
                out.flat[i] = float(v)
            except ValueError:
                raise DataError(f"data {where}: label {v!r} (sample {i}) is not a number; "
                                f"data.task = \"regression\" needs numeric labels") from None
        y = out
    y = y.astype(np.float64)
    if not np.isfinite(y).all():
        i = int(np.argwhere(~np.isfinite(y))[0][0])
        raise DataError(f"data {where}: {name!r} has NaN or infinity (sample {i})")
    return y[:, None] if y.ndim == 1 else y


# -- splits ---------------------------------------------------------------------------------


def _stratified(y, fraction: float, key, where: str = "data", names=(), need_val=False):
    """(rest, held out): ``fraction`` of each class held out, at least one of each."""
    rng = np.random.default_rng(key)
    rest, held = [], []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_held = max(1, int(round(len(idx) * fraction)))
        need = n_held + 1 + (1 if need_val else 0)
        if len(idx) < need:
            name = names[label] if len(names) > label else str(label)
            raise DataError(f"data {where}: class {name!r} has {len(idx)} sample(s); the "
                            f"train/{'validation/' if need_val else ''}test split needs at "
                            f"least {need} of each class (lower data.test_fraction"
                            f"{' or data.val_fraction' if need_val else ''}, or add samples)")
        held.append(idx[:n_held])
        rest.append(idx[n_held:])
    return np.sort(np.concatenate(rest)), np.sort(np.concatenate(held))


def _stratified_subset(y, rest, fraction: float, key, where: str = "data", names=()):
    """(train, val or None): ``fraction`` of ``rest`` for validation, by class."""
    if fraction <= 0:
        return rest, None
    inner_rest, inner_val = _stratified(y[rest], fraction, key, where, names)
    return rest[inner_rest], rest[inner_val]


def _random(n: int, fraction: float, key):
    order = np.random.default_rng(key).permutation(n)
    n_held = max(1, int(round(n * fraction)))
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def _random_subset(rest, fraction: float, key):
    if fraction <= 0:
        return rest, None
    inner_rest, inner_val = _random(len(rest), fraction, key)
    return rest[inner_rest], rest[inner_val]


def _counts(train, val, test) -> dict[str, int]:
    return {"n_train": int(len(train)), "n_val": int(0 if val is None else len(val)),
            "n_test": int(len(test))}


# -- standardisation ----------------------------------------------------------------------


def _prepare(x, y, task, names, train, val, test, *, tokens: int, info) -> Dataset:
    """Standardise with the training part's statistics and flatten sequences."""
    axes = (0, 1) if x.ndim == 3 else 0
    mean, std = x[train].mean(axis=axes), x[train].std(axis=axes)
    std = np.where(std > 0, std, 1.0)   # a constant column becomes 0
    x = ((x - mean) / std).reshape(len(x), -1)
    stats = {"feature_mean": mean.tolist(), "feature_std": std.tolist()}
    if task == REGRESSION:
        t_mean, t_std = y[train].mean(axis=0), y[train].std(axis=0)
        t_std = np.where(t_std > 0, t_std, 1.0)
        y = (y - t_mean) / t_std
        stats.update(target_mean=t_mean.tolist(), target_std=t_std.tolist())
    parts = [(x[i], y[i]) if i is not None else (None, None) for i in (train, val, test)]
    (xtr, ytr), (xv, yv), (xte, yte) = parts
    n_classes = len(names) if task == CLASSIFICATION else 0
    info = {**info, "task": task, "class_names": list(names), **_counts(train, val, test),
            "standardised": True, **stats}
    return Dataset(xtr, ytr, xte, yte, n_classes, tokens, xv, yv, task, tuple(names), info)


def standardise_features(x: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    """New samples in the run's feature units (as the training data was prepared)."""
    x = np.asarray(x, dtype=np.float64)
    if not info.get("standardised"):
        return x.reshape(len(x), -1)
    mean, std = np.asarray(info["feature_mean"]), np.asarray(info["feature_std"])
    return ((x - mean) / std).reshape(len(x), -1)


def restore_targets(y: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    """Regression outputs back in the data's own units."""
    return y * np.asarray(info["target_std"]) + np.asarray(info["target_mean"])


# -- batches --------------------------------------------------------------------------------


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Sample indices of training step ``step``: epoch-wise shuffles from (seed, epoch).

    A pure function of its arguments, so a resumed run draws the same batches.
    """
    per_epoch = max(1, n // batch_size)
    epoch, position = divmod(step, per_epoch)
    return _epoch_order(n, seed, epoch)[position * batch_size : (position + 1) * batch_size]


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffle of one epoch (read-only: kept for the epoch's steps)."""
    order = np.random.default_rng([seed, epoch, 0xDA7A]).permutation(n)
    order.setflags(write=False)
    return order
