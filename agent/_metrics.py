"""What a run measures on its validation and test parts, per task.

Classification: accuracy and the mean loss. Regression, in the standard units the
model learns: the mean squared error, NMSE = MSE / variance of the targets (averaged
over outputs; scale-free, so it is the same in the data's own units), NRMSE = √NMSE
and R² = 1 − SS_res / SS_tot (= 1 − NMSE, per output). Each task has one primary
metric, the one the best checkpoint is chosen by.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PRIMARY", "better", "per_class_accuracy", "score"]

# task -> (primary metric, whether larger is better)
PRIMARY = {"classification": ("accuracy", True), "regression": ("nmse", False)}


def score(task: str, outputs: np.ndarray, y: np.ndarray, losses: np.ndarray) -> dict[str, float]:
    """Metrics of one part: ``outputs`` (B, m) are probabilities or predictions."""
    out = {"loss": float(np.mean(losses))}
    if task == "classification":
        out["accuracy"] = float((outputs.argmax(axis=1) == y).mean())
        return out
    err = ((outputs - y) ** 2).mean(axis=0)
    var = y.var(axis=0)
    nmse = float(np.mean(err / np.where(var > 0, var, 1.0)))
    out.update(mse=float(err.mean()), nmse=nmse, nrmse=float(np.sqrt(nmse)), r2=1.0 - nmse)
    return out


def better(task: str, new: dict[str, float], old: dict[str, float], prefix: str = "val_") -> bool:
    """Whether the metrics ``new`` beat ``old`` (empty: nothing yet) on the primary
    metric of part ``prefix``; an equal accuracy goes to the lower loss (a hundred-odd
    validation samples tie often)."""
    key, larger = PRIMARY[task]
    value = new[prefix + key]
    if not np.isfinite(value):
        return False
    if prefix + key not in old:
        return True
    if value == old[prefix + key] and task == "classification":
        return bool(new[prefix + "loss"] < old[prefix + "loss"])
    return bool(value > old[prefix + key]) if larger else bool(value < old[prefix + key])


def per_class_accuracy(outputs: np.ndarray, y: np.ndarray, n_classes: int) -> list[tuple[float, int]]:
    """(accuracy, samples) of each class, in class order."""
    predicted = outputs.argmax(axis=1)
    rows = []
    for c in range(n_classes):
        mine = y == c
        rows.append((float((predicted[mine] == c).mean()) if mine.any() else float("nan"),
                     int(mine.sum())))
    return rows
