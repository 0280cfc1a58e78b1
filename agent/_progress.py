"""What a person watching a run sees: a live status line and one final result line.

On a terminal the status line (step, loss, last test accuracy, ring evaluations,
elapsed and remaining time) is redrawn in place at most ``max_rate`` times a second;
elsewhere (a pipe, CI) a plain line is printed at every evaluation. The result line
goes to stdout, always exactly one, so ``pgt train | tail -1`` is the result.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

__all__ = ["Progress", "human_count", "human_duration", "metric_text", "result_line"]


def human_count(n: float) -> str:
    """1234 -> '1234', 12345 -> '12.3k', 1234567 -> '1.23M'."""
    if abs(n) < 1e4:
        return f"{n:.0f}"
    for scale, suffix in ((1e3, "k"), (1e6, "M"), (1e9, "G")):
        shown = f"{n / scale:.3g}"
        if abs(float(shown)) < 1000:  # 999999 is '1M', not '1e+03k'
            return shown + suffix
    return f"{n / 1e9:.0f}G"


def human_duration(seconds: float) -> str:
    """84 -> '84 s', 750 -> '12m30s', 7300 -> '2h01m'."""
    seconds = max(0, round(seconds))
    if seconds < 100:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


class Progress:
    """Progress display of one run; call ``start``, then ``step``/``eval``, ``finish``.

    ``live`` defaults to whether ``status`` is a terminal; ``quiet`` silences all
    but the final line. ``clock`` is injectable for tests.
    """

    def __init__(self, *, status: TextIO | None = None, result: TextIO | None = None,
                 live: bool | None = None, quiet: bool = False, silent: bool = False,
                 max_rate: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._status = status or sys.stderr
        self._result = result or sys.stdout
        self._live = self._status.isatty() if live is None else live
        self._quiet = quiet or silent
        self._silent = silent   # not even the result line: library calls never print
        self._interval = 1.0 / max_rate
        self._clock = clock
        self._last_draw = -float("inf")
        self._drawn = False
        self._state: dict[str, Any] = {}

    def start(self, step: int, total: int, elapsed: float = 0.0) -> None:
        """A run begins (or resumes) at ``step`` of ``total``; ``elapsed`` so far."""
        now = self._clock()
        self._state = {"step": step, "total": total, "first_step": step, "t0": now,
                       "elapsed0": elapsed, "loss": None, "acc": None, "ring_evals": 0}

    def step(self, metrics: Mapping[str, Any]) -> None:
        """A training step finished with these metrics."""
        self._state.update(step=metrics.get("step", self._state["step"]),
                           loss=metrics.get("loss"),
                           ring_evals=metrics.get("ring_evals", 0))
        if self._live and not self._quiet and self._clock() - self._last_draw >= self._interval:
            self._draw()

    def eval(self, metrics: Mapping[str, Any]) -> None:
        """An evaluation finished; a plain line off a terminal."""
        self._state["acc"] = metric_text(metrics) if (
            "test_accuracy" in metrics or "test_nmse" in metrics) else None
        if self._quiet:
            return
        if self._live:
            self._draw()
        else:
            print(self._line(), file=self._status, flush=True)

    def notice(self, text: str) -> None:
        """A message for the person (e.g. 'stopping after this step')."""
        self._clear()
        if not self._quiet:
            print(text, file=self._status, flush=True)

    def finish(self, line: str) -> None:
        """Clear the live line and print the one result line on stdout."""
        self._clear()
        if not self._silent:
            print(line, file=self._result, flush=True)

    def elapsed(self) -> float:
        """Seconds of this run, earlier sessions included."""
        return self._state["elapsed0"] + self._clock() - self._state["t0"]

    def _line(self) -> str:
        s = self._state
        parts = [f"step {s['step']}/{s['total']}"]
        if s["loss"] is not None:
            parts.append(f"loss {s['loss']:.4f}")
        if s["acc"] is not None:
            parts.append(f"test {s['acc'].split(' (')[0]}")
        parts.append(f"ring evals {human_count(s['ring_evals'])}")
        parts.append(f"elapsed {human_duration(self.elapsed())}")
        if (left := self._time_left()) is not None:
            parts.append(f"left {human_duration(left)}")
        return "  ".join(parts)

    def _time_left(self) -> float | None:
        s = self._state
        done, spent = s["step"] - s["first_step"], self._clock() - s["t0"]
        if done <= 0 or spent <= 0:
            return None
        return (s["total"] - s["step"]) * spent / done

    def _draw(self) -> None:
        self._last_draw = self._clock()
        width = shutil.get_terminal_size((80, 24)).columns
        line = self._line()
        if len(line) >= width:   # one line, however narrow the terminal: never wrap
            line = line[: max(width - 2, 1)] + "…"
        self._status.write("\r\x1b[K" + line)
        self._status.flush()
        self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            self._status.write("\r\x1b[K")
            self._status.flush()
            self._drawn = False


def metric_text(result: Mapping[str, Any], prefix: str = "test_") -> str:
    """A part's primary metrics in words: "98.0%" or "NMSE 0.0123 (NRMSE 0.111, R² 0.988)"."""
    if result.get("task") == "regression" or f"{prefix}nmse" in result:
        nmse = result.get(f"{prefix}nmse")
        if nmse is None:
            return "not measured yet"
        return (f"NMSE {nmse:.4g} (NRMSE {result[f'{prefix}nrmse']:.4g}, "
                f"R² {result[f'{prefix}r2']:.4f})")
    acc = result.get(f"{prefix}accuracy")
    return f"{100 * acc:.1f}%" if acc is not None else "not measured yet"


def result_line(result: Mapping[str, Any]) -> str:
    """The one line a run ends with, from ``run_training``'s result."""
    regression = result.get("task") == "regression"
    what = "test" if regression else "test accuracy"
    shown = metric_text(result)
    best = result.get("best")
    if best:
        shown += (f"; best validation at step {best['step']}: {what} "
                  f"{metric_text({'task': result.get('task'), **best})}")
    steps = result["step"]
    details = (f"(estimator {result['estimator']}, {steps} step{'s' if steps != 1 else ''}, "
               f"{human_count(result['ring_evals'])} ring evaluations, "
               f"{human_duration(result['elapsed_s'])}) run {result['run_dir']}")
    if result["reason"] == "finished":
        return f"{what} {shown} {details}"
    return (f"stopped at step {result['step']} of {result['total_steps']}, last {what} "
            f"{shown} {details}; pgt resume {result['run_dir']} continues it")
