"""Digital layers: every backward against central finite differences."""

import numpy as np
import pytest

from pgt.kernels import (
    batched_dense_forward,
    dense_backward,
    dense_forward,
    softmax_cross_entropy,
    softmax_cross_entropy_backward,
    tanh_backward,
    tanh_forward,
)
from tests.numeric import numeric_grad




@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_dense_backward_matches_finite_differences(rng):
    x, w, b = rng.normal(size=(5, 4)), rng.normal(size=(4, 3)), rng.normal(size=3)
    upstream = rng.normal(size=(5, 3))

    def objective():
        return float((dense_forward(x, w, b) * upstream).sum())

    gx, gw, gb = dense_backward(x, w, upstream)
    np.testing.assert_allclose(gx, numeric_grad(objective, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gw, numeric_grad(objective, w), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gb, numeric_grad(objective, b), rtol=1e-6, atol=1e-8)


def test_batched_dense_equals_one_layer_per_probe(rng):
    x, w, b = rng.normal(size=(5, 4)), rng.normal(size=(3, 4, 2)), rng.normal(size=(3, 2))
    out = batched_dense_forward(x, w, b)
    for p in range(3):
        np.testing.assert_allclose(out[p], dense_forward(x, w[p], b[p]))
    stacked = batched_dense_forward(np.stack([x] * 3), w, b)
    np.testing.assert_allclose(stacked, out)


@pytest.mark.parametrize("probes", [1, 2, 4, 16, 33])
def test_batched_dense_of_one_input_is_each_probes_sum_in_order_to_the_bit(rng, probes):
    # The first layer's bits, which every recorded run depends on: for each output, the
    # products x[b, i] w[p, i, o] added in order of i, each rounded (no fused
    # multiply-add), as NumPy's einsum does in any memory layout.
    x, w, b = rng.normal(size=(32, 64)), rng.normal(size=(probes, 64, 16)), rng.normal(size=(probes, 16))
    expected = np.zeros((probes, 32, 16))
    for i in range(64):
        expected += x[None, :, i, None] * w[:, None, i, :]
    expected += b[:, None, :]
    assert np.array_equal(batched_dense_forward(x, w, b), expected)
    assert np.array_equal(batched_dense_forward(x, w, b),
                          np.einsum("bi,pio->pbo", x, w) + b[:, None, :])


def test_tanh_backward_matches_finite_differences(rng):
    x = rng.normal(size=(4, 3))
    upstream = rng.normal(size=(4, 3))
    grad = tanh_backward(tanh_forward(x), upstream)
    numeric = numeric_grad(lambda: float((tanh_forward(x) * upstream).sum()), x)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_softmax_cross_entropy_values_and_backward(rng):
    logits = rng.normal(size=(6, 5)) * 3
    labels = rng.integers(0, 5, size=6)
    losses, probs = softmax_cross_entropy(logits, labels)
    expected = -np.log(np.exp(logits[np.arange(6), labels]) / np.exp(logits).sum(axis=1))
    np.testing.assert_allclose(losses, expected, rtol=1e-12)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    weights = rng.uniform(size=6)
    grad = softmax_cross_entropy_backward(probs, labels, weights)
    numeric = numeric_grad(lambda: float((softmax_cross_entropy(logits, labels)[0] * weights).sum()), logits)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    losses, probs = softmax_cross_entropy(np.array([[1000.0, -1000.0]]), np.array([1]))
    assert np.isfinite(losses).all() and losses[0] == pytest.approx(2000.0)
    assert np.isfinite(probs).all()


def test_softmax_cross_entropy_with_probe_axis(rng):
    logits = rng.normal(size=(3, 4, 5))
    labels = rng.integers(0, 5, size=4)
    losses, _ = softmax_cross_entropy(logits, labels)
    for p in range(3):
        np.testing.assert_allclose(losses[p], softmax_cross_entropy(logits[p], labels)[0])
