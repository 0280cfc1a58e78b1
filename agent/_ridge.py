"""The classic reservoir-computing baseline: a closed-form ridge readout.

``estimator.name = "ridge"``: the layers before the ring stay at their seeded start
and the ring is fixed; one pass of the training part (and of the validation part)
through the ring gives its features, and a linear readout on them is solved in
closed form, W = (XᵀX + λI)⁻¹ XᵀT on standardised features X with centred targets T
(one-hot classes, or the regression targets). λ is chosen on the validation split
from a fixed grid; the test set plays no part. This is what reservoir computing does
when nothing before the reservoir can be trained.
"""

from __future__ import annotations

import numpy as np

from pgt._metrics import PRIMARY, score
from pgt._model import loss_head
from pgt._transformer import ParamLayout
from pgt.kernels import mean_squared_error

__all__ = ["LAMBDAS", "LinearReadoutModel", "fit_ridge"]

LAMBDAS = tuple(10.0 ** e for e in range(-8, 5))   # 1e-8 ... 1e4


class LinearReadoutModel:
    """The base model's layers before the ring, then a linear map of the ring's features.

    Parameters: the base model's whole vector (only its layers before the ring are
    used), then the readout ``w_r`` (features, outputs) and ``b_r``. Scores are
    ``features @ w_r + b_r``; the loss is their squared error to the one-hot classes
    (what ridge minimises) or to the regression targets.
    """

    def __init__(self, base, n_features: int, n_outputs: int, task: str) -> None:
        self.base, self.task = base, task
        self.n_outputs = n_outputs
        self.base_dim = base.layout.dim
        self.layout = ParamLayout({"base": (self.base_dim,), "w_r": (n_features, n_outputs),
                                   "b_r": (n_outputs,)}, last_pre="base")
        self.feature_scale = 1.0
        self._loss_backward = loss_head(task)[1]

    def init_params(self, seed: int, init_scale: float = 1.0) -> np.ndarray:
        theta = np.zeros(self.layout.dim)
        theta[: self.base_dim] = self.base.init_params(seed, init_scale)
        return theta

    def pre(self, theta, x):
        return self.base.pre(theta[..., : self.base_dim], x)

    def post(self, theta, feats, y):
        stack = theta if theta.ndim == 2 else theta[None]
        sl = self.layout.slices
        w = stack[:, sl["w_r"]].reshape((len(stack),) + self.layout.sizes["w_r"])
        b = stack[:, sl["b_r"]]
        scores = np.matmul(feats, w) + b[:, None, :]
        target = y if self.task == "regression" else np.eye(self.n_outputs)[y]
        return mean_squared_error(scores, target)

    def pack(self, **grads):
        raise NotImplementedError("the ridge readout is solved in closed form, not stepped")


def fit_ridge(f_train, t_train, f_val, t_val, task: str, lambdas=LAMBDAS):
    """Solve the readout for every λ, keep the one best on the validation part.

    ``f_*`` are features (N, F); ``t_*`` are class indices (N,) or targets (N, m).
    Returns (w (F, m), b (m,), info) with info the grid, each λ's validation metric
    and the chosen λ. The readout acts on raw features (standardisation folded in).
    """
    mean, std = f_train.mean(axis=0), f_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    x = (f_train - mean) / std
    x_val = (f_val - mean) / std
    if task == "classification":
        n_out = int(max(t_train.max(), t_val.max())) + 1
        targets = np.eye(n_out)[t_train]
    else:
        targets = t_train
    t_mean = targets.mean(axis=0)
    eigval, eigvec = np.linalg.eigh(x.T @ x)
    projected = eigvec.T @ (x.T @ (targets - t_mean))
    key, larger_better = PRIMARY[task]
    metrics, best = [], None
    for lam in lambdas:
        w = eigvec @ (projected / (eigval + lam)[:, None])
        pred = x_val @ w + t_mean
        losses = mean_squared_error(pred, np.eye(pred.shape[1])[t_val] if task == "classification" else t_val)[0]
        value = score(task, pred, t_val, losses)[key]
        metrics.append(value)
        if best is None or (value >= best[0] if larger_better else value <= best[0]):
            best = (value, lam, w)   # a tie goes to the larger λ: the smoother readout
    value, lam, w = best
    w_raw = w / std[:, None]
    b = t_mean - mean @ w_raw
    info = {"ridge_lambda": lam, "ridge_lambdas": list(lambdas), f"ridge_val_{key}": metrics}
    return w_raw, b, info
