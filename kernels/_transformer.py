"""Forward and backward of a small transformer's layers.

Token or patch embedding, positional encoding, multi-head self-attention, layer
norm, a GELU MLP, a pre-LN block made of them, and mean or last-token pooling.
Sequences are (B, T, d). Like ``kernels._layers`` every function is xp-generic
(it uses the array module of its inputs); forwards that a backward needs return a
cache, and every backward is checked against finite differences in
tests/kernels/test_transformer.py. Weight gradients sum over batch and tokens.
"""

from __future__ import annotations

import math

import numpy as np

from pgt.kernels._xp import array_module

BLOCK_PARAMS = ("ln1_g", "ln1_b", "wqkv", "bqkv", "wo", "bo",
                "ln2_g", "ln2_b", "w1", "b1", "w2", "b2")


def block_shapes(d_model: int, mlp_width: int) -> dict[str, tuple[int, ...]]:
    """Shapes of one block's parameters, in BLOCK_PARAMS order."""
    d, m = d_model, mlp_width
    return {"ln1_g": (d,), "ln1_b": (d,), "wqkv": (d, 3 * d), "bqkv": (3 * d,),
            "wo": (d, d), "bo": (d,), "ln2_g": (d,), "ln2_b": (d,),
            "w1": (d, m), "b1": (m,), "w2": (m, d), "b2": (d,)}


# -- linear maps and embeddings ------------------------------------------------


def linear_forward(x, w, b):
    """``x @ w + b`` over the last axis of x (..., n_in)."""
    # One 2-D product: much faster than NumPy's stacked matmul for (B, T, n) inputs.
    out = x.reshape(-1, x.shape[-1]) @ w
    return out.reshape(x.shape[:-1] + (w.shape[-1],)) + b


def linear_backward(x, w, grad_out):
    """(grad_x, grad_w, grad_b); weight gradients sum over every leading axis."""
    flat_x = x.reshape(-1, x.shape[-1])
    flat_g = grad_out.reshape(-1, grad_out.shape[-1])
    grad_x = (flat_g @ w.T).reshape(x.shape)
    return grad_x, flat_x.T @ flat_g, flat_g.sum(axis=0)


def token_embedding_forward(ids, table):
    """Rows of ``table`` (V, d) for integer token ids (...)."""
    return table[ids]


def token_embedding_backward(ids, n_tokens: int, grad_out):
    """Gradient w.r.t. the table: a one-hot product, so CuPy needs no scatter-add."""
    xp = array_module(grad_out)
    onehot = (ids.reshape(-1, 1) == xp.arange(n_tokens)).astype(grad_out.dtype)
    return onehot.T @ grad_out.reshape(-1, grad_out.shape[-1])


def sinusoidal_positions(n_positions: int, d_model: int, xp=np):
    """The fixed sine/cosine positional code (T, d) of "Attention is all you need"."""
    pos = np.arange(n_positions)[:, None]
    rate = np.exp(-math.log(10000.0) * (np.arange(d_model) // 2 * 2) / d_model)
    angle = pos * rate[None, :]
    code = np.where(np.arange(d_model) % 2 == 0, np.sin(angle), np.cos(angle))
    return xp.asarray(code)


def positional_forward(x, pos):
    """Add a positional code ``pos`` (T_max, d) to x (B, T, d)."""
    return x + pos[: x.shape[-2]]


def positional_backward(grad_out, n_positions: int):
    """Gradient w.r.t. a learned positional code (n_positions, d)."""
    xp = array_module(grad_out)
    steps, d = grad_out.shape[-2:]
    grad = xp.zeros((n_positions, d), dtype=grad_out.dtype)
    grad[:steps] = grad_out.reshape(-1, steps, d).sum(axis=0)
    return grad


# -- normalisation and nonlinearity ---------------------------------------------


def layer_norm_forward(x, gamma, beta, eps: float = 1e-5):
    """Normalise the last axis; returns (y, cache)."""
    xp = array_module(x)
    centred = x - x.mean(axis=-1, keepdims=True)
    inv = 1.0 / xp.sqrt((centred * centred).mean(axis=-1, keepdims=True) + eps)
    xhat = centred * inv
    return xhat * gamma + beta, (xhat, inv)


def layer_norm_backward(cache, gamma, grad_out):
    """(grad_x, grad_gamma, grad_beta)."""
    xhat, inv = cache
    d = xhat.shape[-1]
    grad_gamma = (grad_out * xhat).reshape(-1, d).sum(axis=0)
    grad_beta = grad_out.reshape(-1, d).sum(axis=0)
    g = grad_out * gamma
    grad_x = inv * (g - g.mean(axis=-1, keepdims=True)
                    - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return grad_x, grad_gamma, grad_beta


_GELU_C = math.sqrt(2.0 / math.pi)


def gelu_forward(x):
    """GELU, tanh approximation (smooth, so finite differences check it exactly)."""
    xp = array_module(x)
    return 0.5 * x * (1.0 + xp.tanh(_GELU_C * (x + 0.044715 * x * x * x)))


def gelu_backward(x, grad_out):
    """Backward of GELU given its input ``x``."""
    xp = array_module(x)
    t = xp.tanh(_GELU_C * (x + 0.044715 * x * x * x))
    slope = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _GELU_C * (1.0 + 3 * 0.044715 * x * x)
    return grad_out * slope


def softmax_forward(scores):
    """Softmax over the last axis."""
    xp = array_module(scores)
    e = xp.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward(probs, grad_out):
    """Backward of softmax given its output."""
    return probs * (grad_out - (grad_out * probs).sum(axis=-1, keepdims=True))


# -- multi-head self-attention and the MLP --------------------------------------


def _split_heads(a, heads: int):
    batch, steps, d = a.shape
    return a.reshape(batch, steps, heads, d // heads).transpose(0, 2, 1, 3)


def _merge_heads(a):
    batch, heads, steps, dh = a.shape
    return a.transpose(0, 2, 1, 3).reshape(batch, steps, heads * dh)


def attention_forward(x, wqkv, bqkv, wo, bo, heads: int):
    """Multi-head self-attention over x (B, T, d), no mask; returns (y, cache)."""
    xp = array_module(x)
    d = x.shape[-1]
    qkv = linear_forward(x, wqkv, bqkv)
    q, k, v = (_split_heads(qkv[..., i * d:(i + 1) * d], heads) for i in range(3))
    scale = 1.0 / math.sqrt(d // heads)
    attn = softmax_forward(xp.matmul(q, k.swapaxes(-1, -2)) * scale)
    merged = _merge_heads(xp.matmul(attn, v))
    return linear_forward(merged, wo, bo), (x, q, k, v, attn, merged)


def attention_backward(cache, wqkv, wo, heads: int, grad_out):
    """(grad_x, {"wqkv", "bqkv", "wo", "bo"} gradients)."""
    xp = array_module(grad_out)
    x, q, k, v, attn, merged = cache
    scale = 1.0 / math.sqrt(x.shape[-1] // heads)
    grad_merged, gwo, gbo = linear_backward(merged, wo, grad_out)
    grad_ctx = _split_heads(grad_merged, heads)
    grad_v = xp.matmul(attn.swapaxes(-1, -2), grad_ctx)
    grad_scores = softmax_backward(attn, xp.matmul(grad_ctx, v.swapaxes(-1, -2))) * scale
    grad_q = xp.matmul(grad_scores, k)
    grad_k = xp.matmul(grad_scores.swapaxes(-1, -2), q)
    grad_qkv = xp.concatenate([_merge_heads(g) for g in (grad_q, grad_k, grad_v)], axis=-1)
    grad_x, gwqkv, gbqkv = linear_backward(x, wqkv, grad_qkv)
    return grad_x, {"wqkv": gwqkv, "bqkv": gbqkv, "wo": gwo, "bo": gbo}


def mlp_forward(x, w1, b1, w2, b2):
    """``gelu(x W1 + b1) W2 + b2``; returns (y, cache)."""
    pre = linear_forward(x, w1, b1)
    hidden = gelu_forward(pre)
    return linear_forward(hidden, w2, b2), (x, pre, hidden)


def mlp_backward(cache, w1, w2, grad_out):
    """(grad_x, {"w1", "b1", "w2", "b2"} gradients)."""
    x, pre, hidden = cache
    grad_hidden, gw2, gb2 = linear_backward(hidden, w2, grad_out)
    grad_x, gw1, gb1 = linear_backward(x, w1, gelu_backward(pre, grad_hidden))
    return grad_x, {"w1": gw1, "b1": gb1, "w2": gw2, "b2": gb2}


# -- a pre-LN transformer block ---------------------------------------------------


def block_forward(x, p, heads: int):
    """``x + attn(ln1(x))``, then ``+ mlp(ln2(.))``; p maps BLOCK_PARAMS to arrays."""
    h1, ln1 = layer_norm_forward(x, p["ln1_g"], p["ln1_b"])
    a, att = attention_forward(h1, p["wqkv"], p["bqkv"], p["wo"], p["bo"], heads)
    mid = x + a
    h2, ln2 = layer_norm_forward(mid, p["ln2_g"], p["ln2_b"])
    m, mlp = mlp_forward(h2, p["w1"], p["b1"], p["w2"], p["b2"])
    return mid + m, (ln1, att, ln2, mlp)


def block_backward(cache, p, heads: int, grad_out):
    """(grad_x, gradients of every BLOCK_PARAMS entry)."""
    ln1, att, ln2, mlp = cache
    grad_h2, grads = mlp_backward(mlp, p["w1"], p["w2"], grad_out)
    grad_mid, grads["ln2_g"], grads["ln2_b"] = layer_norm_backward(ln2, p["ln2_g"], grad_h2)
    grad_mid = grad_mid + grad_out
    grad_h1, att_grads = attention_backward(att, p["wqkv"], p["wo"], heads, grad_mid)
    grad_x, grads["ln1_g"], grads["ln1_b"] = layer_norm_backward(ln1, p["ln1_g"], grad_h1)
    grads.update(att_grads)
    return grad_x + grad_mid, grads


# -- pooling ------------------------------------------------------------------------


def pool_forward(x, how: str = "mean"):
    """(B, T, d) -> (B, d): the mean over tokens, or the last token."""
    if how == "mean":
        return x.mean(axis=-2)
    if how == "last":
        return x[..., -1, :]
    raise ValueError(f"pooling must be 'mean' or 'last', got {how!r}")


def pool_backward(grad_out, steps: int, how: str = "mean"):
    """Gradient (B, T, d) of the pooled tokens."""
    xp = array_module(grad_out)
    if how == "mean":
        return xp.repeat(grad_out[..., None, :] / steps, steps, axis=-2)
    grad = xp.zeros(grad_out.shape[:-1] + (steps, grad_out.shape[-1]), dtype=grad_out.dtype)
    grad[..., -1, :] = grad_out
    return grad
