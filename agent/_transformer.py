"""The paper's second model: a small transformer with the ring as one of its layers.

    tokens (B, T, p) -> embed + positions -> block 1 -> layer norm -> tanh(linear):
      c values per token
      -> the ring reads the T·c values as its input time series (one per round trip)
      -> features (B, T, c·N) -> linear to d_model -> block 2 -> layer norm -> pool
      -> classifier

The ring sits between two pre-LN transformer blocks: attention before it chooses
what the ring is driven with, attention after it reads the ring's fading memory
of the sequence. ``c`` = ring inputs / tokens, so the reservoir decides it (16
inputs over 8 digit rows: 2 round trips per row). Parameters live in one flat
vector, pre-ring layers first; ``pre`` and ``post`` accept a stack of P vectors
(perturbative estimators) and loop over the distinct ones, and both have exact
backwards for the estimators that chain-rule around the ring. The interface is
``pgt._model.DenseRingModel``'s.
"""

from __future__ import annotations

import numpy as np

from pgt._config import ConfigError
from pgt._model import loss_head, pack_grads
from pgt.kernels import tanh_backward
from pgt.kernels._transformer import (
    block_backward,
    block_forward,
    block_shapes,
    layer_norm_backward,
    layer_norm_forward,
    linear_backward,
    linear_forward,
    pool_backward,
    pool_forward,
    positional_backward,
    sinusoidal_positions,
)

_BLOCKS = ("block1", "block2")


class ParamLayout:
    """Named parameter shapes in flat-vector order; ``pre_dim`` ends the pre-ring part."""

    def __init__(self, sizes: dict[str, tuple[int, ...]], last_pre: str) -> None:
        self.sizes = sizes
        self.slices, start = {}, 0
        for name, shape in sizes.items():
            size = int(np.prod(shape))
            self.slices[name] = slice(start, start + size)
            start += size
        self.dim = start
        self.pre_dim = self.slices[last_pre].stop


class TransformerRingModel:
    """Transformer blocks around a reservoir slot (see the module docstring).

    ``tokens`` T and ``patch`` p shape the input rows (B, T·p); ``ring_inputs`` and
    ``ring_features`` are the reservoir's, both multiples of T. Raises ConfigError
    when they are not.
    """

    def __init__(self, *, tokens: int, patch: int, ring_inputs: int, ring_features: int,
                 n_classes: int, d_model: int = 16, heads: int = 2, mlp_width: int = 32,
                 pool: str = "mean", feature_scale: float = 1.0,
                 task: str = "classification") -> None:
        if ring_inputs % tokens or ring_features % tokens:
            raise ConfigError(f"config: a transformer over {tokens} tokens needs a reservoir "
                              f"whose inputs ({ring_inputs}) and features ({ring_features}) "
                              f"are multiples of {tokens} (set inputs= in reservoir.url)")
        self.tokens, self.patch, self.heads, self.pool = tokens, patch, heads, pool
        self.per_token_in = ring_inputs // tokens
        self.per_token_out = ring_features // tokens
        self.feature_scale = feature_scale
        self.task = task
        self._loss, self._loss_backward = loss_head(task)
        d, block = d_model, block_shapes(d_model, mlp_width)
        sizes = {"embed_w": (patch, d), "embed_b": (d,), "pos": (tokens, d),
                 **{f"block1.{k}": s for k, s in block.items()},
                 "ring_ln_g": (d,), "ring_ln_b": (d,),
                 "ring_in_w": (d, self.per_token_in), "ring_in_b": (self.per_token_in,),
                 "ring_out_w": (self.per_token_out, d), "ring_out_b": (d,),
                 **{f"block2.{k}": s for k, s in block.items()},
                 "ln_g": (d,), "ln_b": (d,), "head_w": (d, n_classes), "head_b": (n_classes,)}
        self.layout = ParamLayout(sizes, last_pre="ring_in_b")

    def init_params(self, seed: int, init_scale: float = 1.0) -> np.ndarray:
        """Weights ~ N(0, 1/fan_in) (the embedding times init_scale), gains 1, biases 0,
        positions the sinusoidal code."""
        rng = np.random.default_rng([seed, 0x7A5F])
        theta = np.zeros(self.layout.dim)
        for name, shape in self.layout.sizes.items():
            leaf = name.rsplit(".", 1)[-1]
            if leaf.endswith("_g"):
                value = np.ones(shape)
            elif name == "pos":
                value = sinusoidal_positions(*shape)
            elif len(shape) == 2:
                scale = init_scale if name == "embed_w" else 1.0
                value = rng.standard_normal(shape) * scale / np.sqrt(shape[0])
            else:
                continue
            theta[self.layout.slices[name]] = value.ravel()
        return theta

    def _params(self, flat):
        return {name: flat[sl].reshape(self.layout.sizes[name])
                for name, sl in self.layout.slices.items()}

    @staticmethod
    def _block(p, name):
        prefix = name + "."
        return {k[len(prefix):]: v for k, v in p.items() if k.startswith(prefix)}

    @staticmethod
    def _distinct(stack):
        """Row indices to compute, and for each row which computed result it reuses."""
        same = all(np.array_equal(stack[0], row) for row in stack[1:])
        return ([0], [0] * len(stack)) if same else (list(range(len(stack))), list(range(len(stack))))

    # -- before the ring ----------------------------------------------------------

    def _pre_one(self, p, x):
        tokens = x.reshape(x.shape[0], self.tokens, self.patch)
        h0 = linear_forward(tokens, p["embed_w"], p["embed_b"]) + p["pos"]
        h1, block = block_forward(h0, self._block(p, "block1"), self.heads)
        normed, ln = layer_norm_forward(h1, p["ring_ln_g"], p["ring_ln_b"])
        u = np.tanh(linear_forward(normed, p["ring_in_w"], p["ring_in_b"]))
        return u.reshape(x.shape[0], -1), (tokens, block, ln, normed)

    def pre(self, theta, x):
        """Ring inputs (P, B, T·c) in (-1, 1) for θ (d,) or a stack (P, d)."""
        stack = theta if theta.ndim == 2 else theta[None]
        rows, use = self._distinct(stack)
        done = {i: self._pre_one(self._params(stack[i]), x)[0] for i in rows}
        return np.stack([done[i] for i in use])

    def pre_backward(self, theta, x, u, grad_u):
        """Exact gradients of the pre-ring layers given d(objective)/du, single θ."""
        p = self._params(theta)
        tokens, block, ln, normed = self._pre_one(p, x)[1]
        batch = x.shape[0]
        grad_r = tanh_backward(u.reshape(batch, self.tokens, -1),
                               grad_u.reshape(batch, self.tokens, -1))
        grad_normed, g_rw, g_rb = linear_backward(normed, p["ring_in_w"], grad_r)
        grad_h1, g_ng, g_nb = layer_norm_backward(ln, p["ring_ln_g"], grad_normed)
        grad_h0, g_block = block_backward(block, self._block(p, "block1"), self.heads, grad_h1)
        _, g_ew, g_eb = linear_backward(tokens, p["embed_w"], grad_h0)
        grads = {"embed_w": g_ew, "embed_b": g_eb, "pos": positional_backward(grad_h0, self.tokens),
                 "ring_ln_g": g_ng, "ring_ln_b": g_nb, "ring_in_w": g_rw, "ring_in_b": g_rb}
        grads.update({f"block1.{k}": v for k, v in g_block.items()})
        return grads

    # -- after the ring -----------------------------------------------------------

    def _post_one(self, p, feats):
        batch = feats.shape[0]
        scaled = feats.reshape(batch, self.tokens, self.per_token_out) / self.feature_scale
        h2 = linear_forward(scaled, p["ring_out_w"], p["ring_out_b"])
        h3, block = block_forward(h2, self._block(p, "block2"), self.heads)
        normed, ln = layer_norm_forward(h3, p["ln_g"], p["ln_b"])
        pooled = pool_forward(normed, self.pool)
        logits = linear_forward(pooled, p["head_w"], p["head_b"])
        return logits, (scaled, block, ln, pooled)

    def post(self, theta, feats, y):
        """Per-sample losses (P, B) and the head's outputs from features (P, B, F)."""
        stack = theta if theta.ndim == 2 else theta[None]
        n_probes, batch = feats.shape[:2]
        rows, _ = self._distinct(stack)
        if len(rows) == 1:  # one θ for every probe: one pass over all P·B samples
            logits = self._post_one(self._params(stack[0]), feats.reshape(n_probes * batch, -1))[0]
            logits = logits.reshape(n_probes, batch, -1)
        else:
            logits = np.stack([self._post_one(self._params(stack[i]), feats[i])[0] for i in rows])
        return self._loss(logits, y)

    def post_backward(self, theta, feats, probs, y):
        """Exact gradient of the mean loss w.r.t. the post-ring layers and the features."""
        p = self._params(theta)
        scaled, block, ln, pooled = self._post_one(p, feats)[1]
        batch = y.shape[0]
        grad_logits = self._loss_backward(probs, y, np.full(batch, 1.0 / batch))
        grad_pooled, g_hw, g_hb = linear_backward(pooled, p["head_w"], grad_logits)
        grad_normed = pool_backward(grad_pooled, self.tokens, self.pool)
        grad_h3, g_lg, g_lb = layer_norm_backward(ln, p["ln_g"], grad_normed)
        grad_h2, g_block = block_backward(block, self._block(p, "block2"), self.heads, grad_h3)
        grad_scaled, g_ow, g_ob = linear_backward(scaled, p["ring_out_w"], grad_h2)
        grads = {"ring_out_w": g_ow, "ring_out_b": g_ob, "ln_g": g_lg, "ln_b": g_lb,
                 "head_w": g_hw, "head_b": g_hb,
                 "features": grad_scaled.reshape(batch, -1) / self.feature_scale}
        grads.update({f"block2.{k}": v for k, v in g_block.items()})
        return grads

    def pack(self, **grads) -> np.ndarray:
        """Assemble a flat gradient from per-layer pieces (missing ones are zero)."""
        return pack_grads(self.layout, grads)
