"""Learning curves from a run's events: test accuracy and loss against ring evaluations.

A run logs a ``step`` event per optimizer step (training loss, ring_evals so far)
and an ``eval`` event per test-set evaluation (test accuracy and loss, and
ring_evals). The x axis is the training ring evaluations (single-sample forward
passes through the reservoir), the currency the estimators are compared in.
matplotlib is imported lazily with its file-only backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pgt._logging import EVENTS_FILE, dedupe, read_events
from pgt._runloop import RunDirError

__all__ = ["read_curves", "plot_run", "figure"]

_METRICS = ("test_accuracy", "test_loss", "test_nmse", "val_accuracy", "val_loss", "val_nmse")


def read_curves(run_dir: Path) -> dict[str, list]:
    """Columns of a run's curves: eval (ring_evals, step, and each of test_accuracy,
    test_loss, test_nmse, val_accuracy, val_loss, val_nmse the run logs; a regression
    run has the NMSEs, a classification run the accuracies) and step (ring_evals,
    loss). Raises RunDirError when the run has no events."""
    path = Path(run_dir) / EVENTS_FILE
    if not path.is_file():
        raise RunDirError(f"no {EVENTS_FILE} in {run_dir}")
    curves: dict[str, list] = {k: [] for k in ("eval_ring_evals", "eval_step", "test_loss",
                                              "step_ring_evals", "loss")}
    evals_at_step: dict[int, int] = {}
    for event in dedupe(read_events(path)):   # each step once, across resumes
        if event.get("event") == "step":
            evals_at_step[event["step"]] = event.get("ring_evals", 0)
            curves["step_ring_evals"].append(event.get("ring_evals", 0))
            curves["loss"].append(event["loss"])
        elif event.get("event") == "eval":
            # older runs logged no ring_evals with eval: take it from the step event
            evals = event.get("ring_evals", evals_at_step.get(event["step"], 0))
            curves["eval_ring_evals"].append(evals)
            curves["eval_step"].append(event["step"])
            for key in _METRICS:
                if key in event:
                    curves.setdefault(key, []).append(event[key])
    if not curves["eval_step"]:
        raise RunDirError(f"no eval events in {path} yet")
    return curves


def figure(title: str, metric: str = "test accuracy (%)") -> tuple[Any, Any]:
    """A figure with accuracy (or ``metric``, left) and loss (right) axes against ring
    evaluations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, label in ((acc, metric), (loss, "loss")):
        ax.set_xscale("log")
        ax.set_xlabel("ring evaluations (training)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    loss.set_yscale("log")
    if "NMSE" in metric:
        acc.set_yscale("log")
    fig.suptitle(title)
    return fig, (acc, loss)


def save(fig: Any, out: Path) -> Path:
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    """Draw one run's curves into a PNG (default ``RUN_DIR/curves.png``); return its path."""
    run_dir = Path(run_dir)
    c = read_curves(run_dir)
    regression = "test_nmse" in c
    fig, (acc, loss) = figure(run_dir.name, "test NMSE" if regression else "test accuracy (%)")
    shown = c["test_nmse"] if regression else [100 * a for a in c["test_accuracy"]]
    acc.plot(c["eval_ring_evals"], shown, "o-", ms=3)
    loss.plot(c["step_ring_evals"], c["loss"], lw=0.6, alpha=0.5, label="training (batch)")
    loss.plot(c["eval_ring_evals"], c["test_loss"], "o-", ms=3, label="test")
    loss.legend()
    return save(fig, out or run_dir / "curves.png")
