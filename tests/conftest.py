"""Shared test helpers: a deterministic toy trainer and reservoir for the run loop.

``FakeTrainer`` has the real ``Trainer``'s API and its resume contract (every random
choice a function of (seed, step), the whole state in ``state_dict``), so run-loop
tests are fast, exact and independent of the numerics. ``fake_reservoir`` answers
after ``delay`` seconds of trio time, so autojump-clock tests control how long a
step takes.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import trio


class FakeReservoir:
    def __init__(self, delay: float, shield: bool = False) -> None:
        self.delay, self.shield = delay, shield

    async def forward(self, u: np.ndarray) -> np.ndarray:
        with trio.CancelScope(shield=self.shield):   # shield: a device deaf to cancelling
            await trio.sleep(self.delay)
        return np.tanh(u)


@contextlib.asynccontextmanager
async def fake_reservoir(url: str, *, seed: int = 0,
                         device: str = "cpu") -> AsyncIterator[FakeReservoir]:
    """``fake://?delay=SECONDS[&shield=1]``; any other URL is refused like a real
    backend would."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "fake":
        raise OSError(f"fake reservoir: cannot open {url!r}")
    query = urllib.parse.parse_qs(parsed.query)
    yield FakeReservoir(float(query.get("delay", ["0"])[0]), query.get("shield") == ["1"])


class FakeTrainer:
    """Fits tanh(params) to a target with two-point perturbations and momentum."""

    def __init__(self, cfg: Any, reservoir: FakeReservoir) -> None:
        self.cfg, self.reservoir = cfg, reservoir
        rng = np.random.default_rng([cfg.seed, 0])
        self.target = np.tanh(rng.normal(size=8))
        self.params = rng.normal(size=8)
        self.momentum = np.zeros(8)
        self.step = self.ring_evals = 0
        self.total_steps = cfg.train.steps

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    async def train_step(self) -> dict[str, float]:
        delta = np.random.default_rng([self.cfg.seed, 1, self.step]).choice([-1.0, 1.0], 8)
        sigma = self.cfg.estimator.sigma
        out = await self.reservoir.forward(np.stack([self.params + sigma * delta,
                                                     self.params - sigma * delta]))
        losses = ((out - self.target) ** 2).sum(axis=1)
        self.momentum = 0.9 * self.momentum + (losses[0] - losses[1]) / (2 * sigma) * delta
        self.params = self.params - self.cfg.optimizer.lr * self.momentum
        self.step += 1
        self.ring_evals += 2
        return {"step": self.step, "loss": float(losses.mean()), "ring_evals": self.ring_evals,
                "lr": self.cfg.optimizer.lr}

    async def evaluate(self) -> dict[str, float]:
        out = await self.reservoir.forward(self.params[None])
        loss = float(((out[0] - self.target) ** 2).mean())
        return {"test_accuracy": float(np.exp(-loss)), "test_loss": loss,
                "eval_ring_evals": 1}

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"params": self.params.copy(), "momentum": self.momentum.copy(),
                "step": np.array(self.step), "ring_evals": np.array(self.ring_evals)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if state["params"].shape != self.params.shape:
            raise ValueError(f"params shape {state['params'].shape} != {self.params.shape}")
        self.params = np.array(state["params"])
        self.momentum = np.array(state["momentum"])
        self.step = int(state["step"])
        self.ring_evals = int(state["ring_evals"])


@pytest.fixture
def fakes() -> dict[str, Any]:
    """Keyword arguments that make run_training/evaluate_run use the fakes."""
    return {"make_trainer": FakeTrainer, "open_reservoir": fake_reservoir}
