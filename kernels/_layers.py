"""Forward and backward of the digital layers around the reservoir.

Every function is xp-generic: it uses the array module of its inputs, so NumPy and
CuPy run the same code. Backward functions take the upstream gradient and the
values saved by the forward and return gradients; they are checked against finite
differences in tests/kernels/test_layers.py.
"""

from __future__ import annotations

from pgt.kernels._xp import array_module


def dense_forward(x, w, b):
    """``x @ w + b`` for x (..., n_in), w (n_in, n_out), b (n_out,)."""
    return x @ w + b


def dense_backward(x, w, grad_out):
    """Gradients of a dense layer: (grad_x, grad_w, grad_b).

    ``x`` is (B, n_in), ``grad_out`` (B, n_out); grad_w sums over the batch.
    """
    return grad_out @ w.T, x.T @ grad_out, grad_out.sum(axis=0)


def batched_dense_forward(x, w, b):
    """One dense layer per probe: x (P, B, n_in) or (B, n_in), w (P, n_in, n_out), b (P, n_out)."""
    xp = array_module(w)
    if x.ndim == 2:
        # NumPy's einsum sums over i in order, unfused, whatever the layout; with w as
        # (i, p, o) in memory its inner loop runs along (p, o), several times faster
        # than along i, and every output keeps its bits.
        out = xp.einsum("bi,ipo->pbo", x, xp.ascontiguousarray(w.transpose(1, 0, 2)))
    else:
        out = xp.matmul(x, w)
    return out + b[:, None, :]


def tanh_forward(x):
    return array_module(x).tanh(x)


def tanh_backward(y, grad_out):
    """Backward of tanh given its output ``y``."""
    return grad_out * (1.0 - y * y)


def softmax_cross_entropy(logits, labels):
    """Per-sample cross-entropy and softmax probabilities.

    logits (..., B, C), labels (B,) integer classes. Returns (losses (..., B), probs).
    """
    xp = array_module(logits)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = xp.exp(shifted)
    total = exp.sum(axis=-1, keepdims=True)
    probs = exp / total
    picked = shifted[..., xp.arange(labels.shape[0]), labels]   # shifted[..., b, labels[b]]
    losses = xp.log(total[..., 0]) - picked
    return losses, probs


def softmax_cross_entropy_backward(probs, labels, grad_losses):
    """Gradient of per-sample losses w.r.t. logits, given d(objective)/d(loss_b)."""
    xp = array_module(probs)
    grad = probs.copy()
    rows = xp.arange(labels.shape[0])
    grad[..., rows, labels] -= 1.0
    return grad * grad_losses[..., None]


def mean_squared_error(pred, target):
    """Per-sample squared error, averaged over outputs, and the predictions.

    pred (..., B, m), target (B, m). Returns (losses (..., B), pred): the same pair
    ``softmax_cross_entropy`` returns, so a model's head can be either.
    """
    diff = pred - target
    return (diff * diff).mean(axis=-1), pred


def mean_squared_error_backward(pred, target, grad_losses):
    """Gradient of per-sample squared errors w.r.t. the predictions."""
    return (2.0 / pred.shape[-1]) * (pred - target) * grad_losses[..., None]
