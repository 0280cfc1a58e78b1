"""Digital twins of a ring, learned online from the run's own measurements.

A twin maps ring inputs u (B, n) to features (B, F) and has a vector-Jacobian
product, so the ``twin`` estimator can take the gradient through the ring from the
twin at the measured operating point (physics-aware training: the device computes
the forward pass, the twin only the backward). Both kinds are pure functions of an
explicit state (a dict of arrays, checkpointed with the estimator's):

- ``GreyBox``: the ring's round-trip map (kernels.ring_map) with every physical
  quantity fitted from data — loop gain, input modulation, injection, carrier bias,
  saturation power, nonlinear phase, neighbour coupling, the input mask of the N
  virtual nodes — and a detector gain and offset. Nothing is read from the simulator
  or the URL; only N is taken from the sizes (features = inputs × nodes).
- ``BlackBox``: a one-hidden-layer tanh network, assuming nothing about the physics.

``fit`` takes a few Adam steps on minibatches of a replay buffer of (u, features)
pairs, drawn from (seed, step), so a resumed run fits the same way.
"""

from __future__ import annotations

import numpy as np

from pgt.kernels._ring import ring_map, ring_map_backward

__all__ = ["BlackBox", "GreyBox", "TWINS", "make_twin"]

_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8


class _Twin:
    """The common parts: Adam on a flat parameter vector ``theta``."""

    name = "base"

    def __init__(self, n_inputs: int, n_features: int, lr: float, hidden: int = 0) -> None:
        self.n_inputs, self.n_features, self.lr, self.hidden = n_inputs, n_features, lr, hidden

    def fit(self, state: dict, u: np.ndarray, f: np.ndarray) -> tuple[dict, float]:
        """One Adam step on the mean squared error over (u, f) (scaled by the first
        batch's feature variance); returns (state, loss), the loss as the minibatch's
        NMSE."""
        theta = state["twin.theta"]
        pred, cache = self._forward(theta, u, keep=True)
        scale = float(state["twin.feature_var"])
        err = (pred - f) / scale
        loss = float(((pred - f) ** 2).mean() / max(float(f.var()), 1e-300))   # reported
        grad = self._param_grad(theta, cache, 2.0 * err / err.size)
        t = int(state["twin.t"]) + 1
        m = _BETA1 * state["twin.m"] + (1 - _BETA1) * grad
        v = _BETA2 * state["twin.v"] + (1 - _BETA2) * grad * grad
        step = self.lr * (m / (1 - _BETA1**t)) / (np.sqrt(v / (1 - _BETA2**t)) + _EPS)
        out = dict(state)
        out.update({"twin.theta": theta - step, "twin.m": m, "twin.v": v,
                    "twin.t": np.asarray(t, dtype=np.int64)})
        return out, loss

    def forward(self, state: dict, u: np.ndarray) -> np.ndarray:
        return self._forward(state["twin.theta"], u)

    def vjp(self, state: dict, u: np.ndarray, grad_f: np.ndarray) -> np.ndarray:
        """d<grad_f, twin(u)>/du, (B, n)."""
        _, cache = self._forward(state["twin.theta"], u, keep=True)
        return self._input_grad(state["twin.theta"], cache, grad_f)

    def _fresh(self, theta: np.ndarray, feats: np.ndarray) -> dict:
        var = float(feats.var()) if feats.size else 1.0
        return {"twin.theta": theta, "twin.m": np.zeros_like(theta), "twin.v": np.zeros_like(theta),
                "twin.t": np.asarray(0, dtype=np.int64),
                "twin.feature_var": np.asarray(var if var > 0 else 1.0)}


class GreyBox(_Twin):
    """The ring's round-trip map with its physical quantities fitted (module docstring).

    theta = [gain, kappa, inject, bias, log p_sat, nu, logit(2 tap), log gain_out,
    offset, mask (N)].
    """

    name = "grey"

    def __init__(self, n_inputs: int, n_features: int, lr: float, hidden: int = 0) -> None:
        super().__init__(n_inputs, n_features, lr, hidden)
        if n_features % n_inputs:
            raise ValueError(f"a grey-box twin needs features = inputs x nodes (the ring's "
                             f"time-multiplexed read-out); {n_features} features are not a "
                             f"multiple of {n_inputs} inputs: use estimator.twin_kind = \"black\"")
        self.nodes = n_features // n_inputs

    def init(self, u: np.ndarray, f: np.ndarray) -> dict:
        """A start that needs no knowledge of the device: generic physics and a mask of
        zeros, from which the gradient sets each node's sign consistently with the
        others (from the first round trip's power alone, a_0 = b m u_0, the signs
        cannot be told apart, and a wrong pattern is a local minimum); the detector
        gain from the first round trip's power, quadratic in u_0 (b² m² gain)."""
        f = f.reshape(len(u), self.n_inputs, self.nodes)
        design = np.stack([np.ones(len(u)), u[:, 0], u[:, 0] ** 2], axis=1)
        coef, *_ = np.linalg.lstsq(design, f[:, 0, :], rcond=None)
        inject = 0.5
        scale = max(float(np.abs(coef[2]).mean()) / inject**2 * 3.0, 1e-6)   # E[m²] = 1/3
        head = [0.5, 0.3, inject, 0.1, 0.0, 0.5, 0.0, np.log(scale), 0.0]   # bias 0.1: not at rest
        return self._fresh(np.concatenate([head, np.zeros(self.nodes)]), f)

    @staticmethod
    def _unpack(theta):
        gain, kappa, inject, bias, log_ps, nu, tap_logit, log_out, offset = theta[:9]
        scalars = {"gain": gain, "kappa": kappa, "inject": inject, "bias": bias,
                   "p_sat": float(np.exp(log_ps)), "nu": nu,
                   "tap": float(0.5 / (1.0 + np.exp(-tap_logit)))}
        return scalars, float(np.exp(log_out)), float(offset), theta[9:]

    def _forward(self, theta, u, keep=False):
        scalars, out, offset, mask = self._unpack(theta)
        result = ring_map(np.asarray(u, dtype=np.float64), mask, keep_cache=keep, **scalars)
        feats = result[0] if keep else result
        pred = (out * feats + offset).reshape(len(u), -1)
        return (pred, (result[1], feats, scalars, out)) if keep else pred

    def _input_grad(self, theta, cache, grad_f):
        ring_cache, feats, _, out = cache
        return ring_map_backward(ring_cache, out * grad_f.reshape(feats.shape))[0]

    def _param_grad(self, theta, cache, grad_pred):
        ring_cache, feats, s, out = cache
        g = grad_pred.reshape(feats.shape)
        _, grads = ring_map_backward(ring_cache, out * g, wrt_params=True)
        d = np.empty_like(theta)
        d[:9] = [grads["gain"], grads["kappa"], grads["inject"], grads["bias"],
                 grads["p_sat"] * s["p_sat"], grads["nu"],
                 grads["tap"] * s["tap"] * (1.0 - 2.0 * s["tap"]),
                 float((g * feats).sum()) * out, float(g.sum())]
        d[9:] = grads["mask"]
        return d


class BlackBox(_Twin):
    """features = W2 tanh(W1 u + b1) + b2: a twin that assumes nothing about the ring."""

    name = "black"

    def init(self, u: np.ndarray, f: np.ndarray) -> dict:
        rng = np.random.default_rng([self.n_inputs, self.n_features, 0xB1AC])
        n, h, o = self.n_inputs, self.hidden, self.n_features
        w1 = rng.standard_normal((n, h)) / np.sqrt(n)
        w2 = rng.standard_normal((h, o)) / np.sqrt(h) * 0.1
        b2 = f.mean(axis=0)
        return self._fresh(np.concatenate([w1.ravel(), np.zeros(h), w2.ravel(), b2]), f)

    def _parts(self, theta):
        n, h, o = self.n_inputs, self.hidden, self.n_features
        i = 0
        w1 = theta[i:i + n * h].reshape(n, h)
        i += n * h
        b1 = theta[i:i + h]
        i += h
        w2 = theta[i:i + h * o].reshape(h, o)
        i += h * o
        return w1, b1, w2, theta[i:i + o]

    def _forward(self, theta, u, keep=False):
        w1, b1, w2, b2 = self._parts(theta)
        hid = np.tanh(u @ w1 + b1)
        pred = hid @ w2 + b2
        return (pred, (u, hid)) if keep else pred

    def _input_grad(self, theta, cache, grad_f):
        w1, _, w2, _ = self._parts(theta)
        _, hid = cache
        return ((grad_f @ w2.T) * (1.0 - hid * hid)) @ w1.T

    def _param_grad(self, theta, cache, grad_pred):
        w1, _, w2, _ = self._parts(theta)
        u, hid = cache
        g_hid = (grad_pred @ w2.T) * (1.0 - hid * hid)
        return np.concatenate([(u.T @ g_hid).ravel(), g_hid.sum(axis=0),
                               (hid.T @ grad_pred).ravel(), grad_pred.sum(axis=0)])


TWINS = {cls.name: cls for cls in (GreyBox, BlackBox)}


def make_twin(kind: str, n_inputs: int, n_features: int, lr: float, hidden: int) -> _Twin:
    return TWINS[kind](n_inputs, n_features, lr, hidden)
