"""Optimizers on a flat parameter vector, with explicit state (dict of arrays)."""

from __future__ import annotations

import numpy as np

from pgt._schema import OptimizerConfig


class SGD:
    """SGD with (heavy-ball) momentum and decoupled weight decay."""

    def __init__(self, cfg: OptimizerConfig) -> None:
        self.cfg = cfg

    def init(self, dim: int) -> dict[str, np.ndarray]:
        return {"velocity": np.zeros(dim)}

    def update(self, params, grad, state, lr_scale: float = 1.0):
        lr = self.cfg.lr * lr_scale
        velocity = self.cfg.momentum * state["velocity"] + grad
        params = params * (1.0 - lr * self.cfg.weight_decay) - lr * velocity
        return params, {"velocity": velocity}


class Adam:
    """Adam (Kingma & Ba) with bias correction and decoupled weight decay."""

    def __init__(self, cfg: OptimizerConfig) -> None:
        self.cfg = cfg

    def init(self, dim: int) -> dict[str, np.ndarray]:
        return {"m": np.zeros(dim), "v": np.zeros(dim), "t": np.asarray(0, dtype=np.int64)}

    def update(self, params, grad, state, lr_scale: float = 1.0):
        c = self.cfg
        t = int(state["t"]) + 1
        m = c.beta1 * state["m"] + (1.0 - c.beta1) * grad
        v = c.beta2 * state["v"] + (1.0 - c.beta2) * grad * grad
        m_hat = m / (1.0 - c.beta1**t)
        v_hat = v / (1.0 - c.beta2**t)
        lr = c.lr * lr_scale
        params = params * (1.0 - lr * c.weight_decay) - lr * m_hat / (np.sqrt(v_hat) + c.eps)
        return params, {"m": m, "v": v, "t": np.asarray(t, dtype=np.int64)}


def make_optimizer(cfg: OptimizerConfig) -> SGD | Adam:
    if cfg.name == "adam":
        return Adam(cfg)
    if cfg.name == "sgd":
        return SGD(cfg)
    raise ValueError(f"unknown optimizer {cfg.name!r} (known: adam, sgd)")
