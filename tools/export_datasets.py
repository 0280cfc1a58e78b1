"""Export two classification datasets that ship with scikit-learn to the files a lab
would bring: a CSV (header row, text labels in a ``label`` column) and an NPZ
(``x``, and ``y`` as the same text labels), so ``pgt train --data FILE`` can be shown on data
that is not built in.

    python tools/export_datasets.py [OUT_DIR]      # default: ./data

- wine: 178 wines, 13 chemical measurements, 3 cultivars (class_0 … class_2)
- breast_cancer: 569 tumours, 30 image features, malignant / benign

Values are written with ``repr`` precision, so the CSV and the NPZ hold the same
numbers and train to the same bits.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

DATASETS = ("wine", "breast_cancer")


def _load(name: str):
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    return bunch.data, bunch.target, list(bunch.feature_names), list(bunch.target_names)


def export(name: str, out: Path) -> tuple[Path, Path]:
    """Write ``out/<name>.csv`` and ``out/<name>.npz``; return their paths."""
    x, y, columns, classes = _load(name)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, npz_path = out / f"{name}.csv", out / f"{name}.npz"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([*columns, "label"])
        for row, label in zip(x, y):
            writer.writerow([*(repr(float(v)) for v in row), classes[label]])
    np.savez(npz_path, x=x, y=np.array(classes)[y])   # text labels, as in the CSV
    return csv_path, npz_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default="data", help="folder for the files")
    args = parser.parse_args(argv)
    for name in DATASETS:
        for path in export(name, Path(args.out)):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
