"""Short-term memory capacity, the standard reservoir-computing benchmark.

Drive the ring with one long i.i.d. input sequence u_n ~ U[-1, 1]; for each delay
k, fit a ridge-regression readout of the detector features at step n to u_{n-k}
on a training stretch and score it by the squared correlation r²(k) on a held-out
stretch. The capacity is Σ_k r²(k) (Jaeger 2001); a linear reservoir of N nodes
has at most N.
"""

from __future__ import annotations

import numpy as np

from pgt.kernels._ring import RingParams, ring_forward


def _ridge_fit(x: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    gram = x.T @ x
    gram[np.diag_indices_from(gram)] += ridge * np.trace(gram) / len(gram)
    return np.linalg.solve(gram, x.T @ y)


def memory_curve(params: RingParams, *, length: int = 6000, washout: int = 200,
                 max_delay: int = 40, seed: int = 0, ridge: float = 1e-6) -> np.ndarray:
    """r²(k) for k = 1..max_delay (index k-1), measured on the noise-free ring."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(-1.0, 1.0, length)
    feats = ring_forward(params, u[None, :])[0]                      # (length, nodes)
    design = np.hstack([feats, np.ones((length, 1))])
    split = washout + (length - washout) * 2 // 3
    scores = np.empty(max_delay)
    for k in range(1, max_delay + 1):
        x_tr, y_tr = design[washout:split], u[washout - k : split - k]
        x_te, y_te = design[split:], u[split - k : length - k]
        pred = x_te @ _ridge_fit(x_tr, y_tr, ridge)
        r = np.corrcoef(pred, y_te)[0, 1]
        scores[k - 1] = 0.0 if not np.isfinite(r) else r * r
    return scores


def memory_capacity(params: RingParams, **kwargs) -> float:
    """Σ_k r²(k): the ring's short-term memory capacity (see ``memory_curve``)."""
    return float(memory_curve(params, **kwargs).sum())
