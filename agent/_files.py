"""A lab's own data from files: ``.csv`` with a header row, or ``.npz`` arrays.

Both readers return a ``RawData``: features, labels (strings or numbers, as the file
has them) and, where the file keeps its own split, the test part. They check
everything a training run would trip over later and raise ``DataError`` with one
line naming the file and the row and column, or the array, at fault.

- CSV: the first row names the columns; the label column is ``label`` unless
  ``data.label`` names another; every other column is a numeric feature. Rows are
  counted as the file's lines (the header is line 1).
- NPZ: arrays ``x`` — (N, D) features, or (N, T, C) sequences read as T tokens of C
  values — and ``y``; optionally ``x_test`` and ``y_test`` together. Nothing is
  unpickled.
"""

from __future__ import annotations

import csv
import hashlib
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pgt._data import DataError

__all__ = ["RawData", "file_sha256", "read_data_file"]

FORMATS = (".csv", ".npz")


@dataclass(frozen=True)
class RawData:
    """What a file holds, before the labels are interpreted and the data split."""

    x: np.ndarray                   # (N, D) or (N, T, C), float64, finite
    y: np.ndarray                   # (N,) strings or numbers, or (N, m) numbers
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    columns: tuple[str, ...] = ()   # CSV: the feature columns' names
    label: str = "y"                # CSV: the label column; NPZ: the label array
    lines: tuple[int, ...] = ()     # CSV: each sample's line in the file

    def locate(self, i: int) -> str:
        """Where sample ``i``'s label sits, for a message."""
        if self.lines:
            return f"line {self.lines[i]}, column {self.label!r}"
        return f"array {self.label!r}, sample {i}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_data_file(path: Path, label: str = "label") -> RawData:
    """Read a ``.csv`` or ``.npz`` data file. Raises DataError (one line)."""
    if path.suffix.lower() not in FORMATS:
        raise DataError(f"data file {path}: unknown format {path.suffix or '(no suffix)'!r} "
                        f"(known: {', '.join(FORMATS)})")
    if not path.is_file():
        raise DataError(f"data file {path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"data file {path}: the file is empty")
    if path.suffix.lower() == ".csv":
        return _read_csv(path, label)
    return _read_npz(path)


# -- CSV ----------------------------------------------------------------------------


def _read_csv(path: Path, label: str) -> RawData:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise DataError(f"data file {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DataError(f"data file {path}: not valid CSV ({e})") from None
    lines = [(n, row) for n, row in enumerate(rows, start=1) if any(c.strip() for c in row)]
    if not lines:
        raise DataError(f"data file {path}: no header row (the file holds no data)")
    (_, header), body = lines[0], lines[1:]
    header = [h.strip() for h in header]
    if label not in header:
        raise DataError(f"data file {path}: no label column {label!r} (columns: "
                        f"{', '.join(header)}); set data.label to the label's column")
    if len(set(header)) != len(header):
        twice = sorted({h for h in header if header.count(h) > 1})
        raise DataError(f"data file {path}: column names appear twice: {', '.join(twice)}")
    if not body:
        raise DataError(f"data file {path}: a header but no data rows")
    where = header.index(label)
    features = [i for i in range(len(header)) if i != where]
    if not features:
        raise DataError(f"data file {path}: no feature columns besides {label!r}")
    x = np.empty((len(body), len(features)))
    y = []
    for r, (line, row) in enumerate(body):
        if len(row) != len(header):
            raise DataError(f"data file {path}: line {line} has {len(row)} cells, the header "
                            f"has {len(header)}")
        for c, i in enumerate(features):
            x[r, c] = _number(row[i], path, line, header[i])
        cell = row[where].strip()
        if not cell:
            raise DataError(f"data file {path}: line {line}, column {label!r}: empty label")
        y.append(cell)
    return RawData(x, np.array(y), columns=tuple(header[i] for i in features), label=label,
                   lines=tuple(line for line, _ in body))


def _number(cell: str, path: Path, line: int, column: str) -> float:
    text = cell.strip()
    try:
        value = float(text)
    except ValueError:
        shown = repr(text) if text else "an empty cell"
        raise DataError(f"data file {path}: line {line}, column {column!r}: {shown} is not "
                        f"a number") from None
    if not math.isfinite(value):
        raise DataError(f"data file {path}: line {line}, column {column!r}: {text!r} is not "
                        f"a finite number")
    return value


# -- NPZ ----------------------------------------------------------------------------


def _read_npz(path: Path) -> RawData:
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            arrays = {name: _array(npz, name, path) for name in ("x", "y", "x_test", "y_test")
                      if name in names}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"data file {path}: not a readable .npz archive ({e})") from None
    for name in ("x", "y"):
        if name not in arrays:
            raise DataError(f"data file {path}: no array {name!r} (arrays: "
                            f"{', '.join(names) or 'none'})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        given, missing = ("x_test", "y_test") if "x_test" in arrays else ("y_test", "x_test")
        raise DataError(f"data file {path}: array {given!r} without {missing!r} (give both "
                        f"or neither)")
    x, y = _features(arrays["x"], "x", path), _labels(arrays["y"], "y", path)
    _same_length(x, y, ("x", "y"), path)
    x_test = y_test = None
    if "x_test" in arrays:
        x_test = _features(arrays["x_test"], "x_test", path)
        y_test = _labels(arrays["y_test"], "y_test", path)
        _same_length(x_test, y_test, ("x_test", "y_test"), path)
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(f"data file {path}: 'x_test' has samples of shape "
                            f"{x_test.shape[1:]}, 'x' of shape {x.shape[1:]}")
        if y_test.shape[1:] != y.shape[1:]:
            raise DataError(f"data file {path}: 'y_test' has labels of shape "
                            f"{y_test.shape[1:]}, 'y' of shape {y.shape[1:]}")
    return RawData(x, y, x_test, y_test)


def _array(npz, name: str, path: Path) -> np.ndarray:
    try:
        return npz[name]
    except ValueError:   # an object array: would need pickle
        raise DataError(f"data file {path}: array {name!r} holds Python objects (pickled); "
                        f"save numbers, or strings as a fixed-width text array") from None


def _features(x: np.ndarray, name: str, path: Path) -> np.ndarray:
    if x.ndim not in (2, 3):
        raise DataError(f"data file {path}: array {name!r} has shape {x.shape}; it must be "
                        f"(samples, features) or (samples, tokens, channels)")
    if x.shape[0] == 0 or x.size == 0:
        raise DataError(f"data file {path}: array {name!r} is empty (shape {x.shape})")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or np.iscomplexobj(x):
        raise DataError(f"data file {path}: array {name!r} holds {x.dtype} values, not "
                        f"real numbers")
    x = x.astype(np.float64)
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        raise DataError(f"data file {path}: array {name!r} has NaN or infinity at index "
                        f"{tuple(int(i) for i in bad[0])}")
    return x


def _labels(y: np.ndarray, name: str, path: Path) -> np.ndarray:
    if y.ndim not in (1, 2) or y.shape[0] == 0:
        raise DataError(f"data file {path}: array {name!r} has shape {y.shape}; labels must "
                        f"be (samples,) or, for regression, (samples, outputs)")
    if y.dtype.kind not in "biuf" + "U":
        raise DataError(f"data file {path}: array {name!r} holds {y.dtype} values; labels "
                        f"are numbers or text")
    if y.dtype.kind == "f":
        bad = np.argwhere(~np.isfinite(y))
        if len(bad):
            raise DataError(f"data file {path}: array {name!r} has NaN or infinity at index "
                            f"{tuple(int(i) for i in bad[0])}")
    return y


def _same_length(x: np.ndarray, y: np.ndarray, names: tuple[str, str], path: Path) -> None:
    if len(x) != len(y):
        raise DataError(f"data file {path}: {names[0]!r} has {len(x)} samples but "
                        f"{names[1]!r} has {len(y)}")
