"""Datasets that ship offline, a seeded train/test split, deterministic batches."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


class DataError(ValueError):
    """A dataset is missing or has the wrong shape or values."""


@dataclass(frozen=True)
class Dataset:
    """Features in [0, 1] as float64 (N, D) and integer labels (N,).

    ``tokens``: how many equal tokens a sequence model reads each row as (D must be
    a multiple); 1 for data that is not a sequence.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    tokens: int = 1

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    # scikit-learn ships the 1,797 8x8 handwritten digits inside the package.
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data / 16.0, digits.target


def validate(x, y, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Check a dataset's arrays; raise DataError with a one-line reason."""
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


def split(x, y, test_fraction: float, seed: int, name: str = "data", tokens: int = 1) -> Dataset:
    """A seeded, stratified train/test split."""
    x, y = validate(x, y, name)
    rng = np.random.default_rng([seed, 0x5B117])
    train, test = [], []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    train, test = np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
    return Dataset(x[train], y[train], x[test], y[test], int(y.max()) + 1, tokens)


DATASETS = ("digits", "digit_rows", "delayed_parity")


def load_dataset(name: str, test_fraction: float, split_seed: int, options=None) -> Dataset:
    """Load dataset ``name`` and split it.

    "digits": 64 pixels per image; "digit_rows": the same images read as a sequence
    of 8 rows of 8 pixels; "delayed_parity": generated bits (pgt._tasks), one per
    token, shaped by ``options`` (a DataConfig: seq_len, delay, parity_bits).
    """
    if name in ("digits", "digit_rows"):
        x, y = _load_digits()
        return split(x, y, test_fraction, split_seed, name, tokens=8 if name == "digit_rows" else 1)
    if name == "delayed_parity":
        from pgt._schema import DataConfig
        from pgt._tasks import delayed_parity

        o = options if options is not None else DataConfig()
        try:
            x, y = delayed_parity(o.seq_len, o.delay, o.parity_bits, split_seed)
        except ValueError as e:
            raise DataError(str(e)) from None
        return split(x, y, test_fraction, split_seed, name, tokens=o.seq_len)
    raise DataError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")


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
