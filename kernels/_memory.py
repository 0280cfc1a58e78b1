"""Short-term memory and parity-check capacity, the standard reservoir benchmarks.

Both drive the ring with one long i.i.d. input sequence, discard a washout, fit a
ridge-regression readout of the detector features at step n to a target on the first
half of the rest and score it by the squared correlation r² on the held-out second
half.

- Memory capacity (Jaeger 2001): inputs u_n ~ U[-1, 1], targets u_{n-k} for delays
  k = 1, 2, ...; MC = Σ_k r²(k). A linear reservoir of N nodes has at most N.
- Parity-check capacity (as used for active rings by Watt & Kostylev and later): bits
  s_n ∈ {0, 1} driven as u_n = 2 s_n − 1, targets the parity (XOR) of the three bits
  s_{n-k}, s_{n-k-1}, s_{n-k-2} for k = 0, 1, ...; PC = Σ_k r²(k). A linear readout
  can only find parity where the ring's nonlinearity has made it.
"""

from __future__ import annotations

import numpy as np

from pgt.kernels._ring import RingParams, ring_forward

__all__ = ["memory_capacity", "memory_curve", "parity_capacity", "parity_curve"]


def _ridge_fit(x: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    gram = x.T @ x
    gram[np.diag_indices_from(gram)] += ridge * np.trace(gram) / len(gram)
    return np.linalg.solve(gram, x.T @ y)


def _features(params: RingParams, u: np.ndarray, seed: int) -> np.ndarray:
    noisy = params.noise > 0 or params.floor > 0
    feats = ring_forward(params, u[None, :], seed=seed if noisy else None)[0]
    return np.hstack([feats, np.ones((len(u), 1))])


def _scores(design, target_at, delays, washout: int, ridge: float) -> np.ndarray:
    length = len(design)
    split = washout + (length - washout) // 2   # a held-out half
    scores = np.empty(len(delays))
    for i, k in enumerate(delays):
        rows = np.arange(washout, length)
        target = target_at(rows, k)
        train, test = rows < split, rows >= split
        pred = design[rows[test]] @ _ridge_fit(design[rows[train]], target[train], ridge)
        r = np.corrcoef(pred, target[test])[0, 1]
        scores[i] = 0.0 if not np.isfinite(r) else r * r
    return scores


def memory_curve(params: RingParams, *, length: int = 6000, washout: int = 200,
                 max_delay: int = 40, seed: int = 0, ridge: float = 1e-6) -> np.ndarray:
    """r²(k) of recalling u_{n-k}, k = 1..max_delay (index k-1)."""
    u = np.random.default_rng(seed).uniform(-1.0, 1.0, length)
    design = _features(params, u, seed)
    return _scores(design, lambda rows, k: u[rows - k], range(1, max_delay + 1), washout, ridge)


def memory_capacity(params: RingParams, **kwargs) -> float:
    """Σ_k r²(k): the ring's short-term memory capacity (see ``memory_curve``)."""
    return float(memory_curve(params, **kwargs).sum())


def parity_curve(params: RingParams, *, length: int = 6000, washout: int = 200,
                 max_delay: int = 20, seed: int = 0, ridge: float = 1e-6) -> np.ndarray:
    """r²(k) of the parity of bits n-k, n-k-1, n-k-2, k = 0..max_delay-1."""
    bits = np.random.default_rng([seed, 0xB17]).integers(0, 2, length)
    design = _features(params, 2.0 * bits - 1.0, seed)

    def parity(rows, k):
        return ((bits[rows - k] + bits[rows - k - 1] + bits[rows - k - 2]) % 2).astype(float)

    return _scores(design, parity, range(max_delay), washout, ridge)


def parity_capacity(params: RingParams, **kwargs) -> float:
    """Σ_k r²(k): the ring's parity-check capacity (see ``parity_curve``)."""
    return float(parity_curve(params, **kwargs).sum())
