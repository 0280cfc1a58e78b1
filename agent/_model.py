"""The paper's dense model: input -> dense -> tanh -> ring -> dense -> classes (or
regression outputs).

The model owns its digital layers and a flat parameter vector; the ring is a slot
filled by whatever reservoir the agent hands it. ``pre`` computes the ring's
inputs, ``post`` the per-sample losses from the ring's features; both accept a
stack of P perturbed parameter vectors for perturbative estimators, and both have
exact backwards for the estimators that chain-rule around the ring.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from pgt.kernels import (
    batched_dense_forward,
    dense_backward,
    mean_squared_error,
    mean_squared_error_backward,
    softmax_cross_entropy,
    softmax_cross_entropy_backward,
    tanh_backward,
    tanh_forward,
)

_HEADS = {"classification": (softmax_cross_entropy, softmax_cross_entropy_backward),
          "regression": (mean_squared_error, mean_squared_error_backward)}


def loss_head(task: str):
    """(per-sample loss and outputs, its backward) of a task: softmax cross-entropy
    over classes, or squared error averaged over regression outputs."""
    return _HEADS[task]


@dataclass(frozen=True)
class Layout:
    """Where each layer's weights sit in the flat parameter vector."""

    n_in: int
    n_ring_in: int
    n_ring_out: int
    n_classes: int      # the head's width: classes, or regression outputs

    # Cached: the per-probe layers read them on every call (a frozen dataclass's
    # cached_property writes the instance __dict__ directly).
    @functools.cached_property
    def sizes(self) -> dict[str, tuple[int, ...]]:
        return {
            "w1": (self.n_in, self.n_ring_in), "b1": (self.n_ring_in,),
            "w2": (self.n_ring_out, self.n_classes), "b2": (self.n_classes,),
        }

    @functools.cached_property
    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for name, shape in self.sizes.items():
            size = int(np.prod(shape))
            out[name] = slice(start, start + size)
            start += size
        return out

    @functools.cached_property
    def dim(self) -> int:
        return sum(int(np.prod(s)) for s in self.sizes.values())

    @functools.cached_property
    def pre_dim(self) -> int:
        """Parameters before the ring (w1, b1) come first in the vector."""
        return self.slices["b1"].stop


class DenseRingModel:
    """Dense layers around a reservoir slot.

    ``feature_scale`` divides the ring's detector readings before the readout so
    that the readout sees numbers of order one.
    """

    def __init__(self, layout: Layout, feature_scale: float = 1.0,
                 task: str = "classification") -> None:
        self.layout = layout
        self.feature_scale = feature_scale
        self.task = task
        self._loss, self._loss_backward = loss_head(task)

    def init_params(self, seed: int, init_scale: float = 1.0) -> np.ndarray:
        rng = np.random.default_rng([seed, 0x1417])
        lay = self.layout
        theta = np.zeros(lay.dim)
        sl = lay.slices
        theta[sl["w1"]] = rng.standard_normal(lay.n_in * lay.n_ring_in) * init_scale / np.sqrt(lay.n_in)
        return theta

    def _unpack(self, theta, names=None):
        """Views of each layer's weights (or of ``names``) with a leading probe axis (P, ...)."""
        stack = theta if theta.ndim == 2 else theta[None]
        slices, sizes = self.layout.slices, self.layout.sizes
        return {
            name: stack[:, slices[name]].reshape((stack.shape[0],) + sizes[name])
            for name in (names or slices)
        }

    def pre(self, theta, x):
        """Ring inputs u = tanh(x W1 + b1): (P, B, n_ring_in), in (-1, 1)."""
        p = self._unpack(theta, ("w1", "b1"))
        return tanh_forward(batched_dense_forward(x, p["w1"], p["b1"]))

    def post(self, theta, feats, y):
        """Per-sample losses (P, B) and the head's outputs (softmax probabilities, or
        predictions) from features (P, B, F)."""
        return self.post_scaled(theta, feats / self.feature_scale, y)

    def post_scaled(self, theta, scaled, y):
        """``post`` of features already divided by ``feature_scale``."""
        p = self._unpack(theta, ("w2", "b2"))
        logits = batched_dense_forward(scaled, p["w2"], p["b2"])
        return self._loss(logits, y)

    def post_backward(self, theta, feats, probs, y):
        """Exact gradient of the mean loss w.r.t. (w2, b2) and the features, single θ."""
        p = self._unpack(theta)
        batch = y.shape[0]
        grad_logits = self._loss_backward(probs, y, np.full(batch, 1.0 / batch))
        scaled = feats / self.feature_scale
        grad_feats, gw2, gb2 = dense_backward(scaled, p["w2"][0], grad_logits)
        return {"w2": gw2, "b2": gb2, "features": grad_feats / self.feature_scale}

    def pre_backward(self, theta, x, u, grad_u):
        """Exact gradient w.r.t. (w1, b1) given d(objective)/du, single θ."""
        p = self._unpack(theta)
        grad_h = tanh_backward(u, grad_u)
        _, gw1, gb1 = dense_backward(x, p["w1"][0], grad_h)
        return {"w1": gw1, "b1": gb1}

    def pack(self, **grads) -> np.ndarray:
        """Assemble a flat gradient from per-layer pieces (missing ones are zero)."""
        return pack_grads(self.layout, grads)


def pack_grads(layout, grads) -> np.ndarray:
    """A flat gradient from per-layer pieces named as ``layout.slices`` (missing: zero).

    Names the layout does not know (such as "features") are skipped.
    """
    flat = np.zeros(layout.dim)
    for name, sl in layout.slices.items():
        if name in grads:
            flat[sl] = np.asarray(grads[name]).ravel()
    return flat
