"""Transformer layers: every backward against central finite differences."""

import numpy as np
import pytest

from pgt.kernels._transformer import (
    BLOCK_PARAMS,
    attention_backward,
    attention_forward,
    block_backward,
    block_forward,
    block_shapes,
    gelu_backward,
    gelu_forward,
    layer_norm_backward,
    layer_norm_forward,
    linear_backward,
    linear_forward,
    mlp_backward,
    mlp_forward,
    pool_backward,
    pool_forward,
    positional_backward,
    positional_forward,
    sinusoidal_positions,
    softmax_backward,
    softmax_forward,
    token_embedding_backward,
    token_embedding_forward,
)
from tests.numeric import numeric_grad




def check(objective, pairs):
    """Each (array, analytic gradient) pair against finite differences of objective."""
    for array, analytic in pairs:
        np.testing.assert_allclose(analytic, numeric_grad(objective, array), rtol=1e-5, atol=1e-8)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_linear_backward_sums_over_batch_and_tokens(rng):
    x, w, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(4, 5)), rng.normal(size=5)
    up = rng.normal(size=(2, 3, 5))

    def obj():
        return float((linear_forward(x, w, b) * up).sum())

    gx, gw, gb = linear_backward(x, w, up)
    check(obj, [(x, gx), (w, gw), (b, gb)])


def test_token_embedding_backward_accumulates_repeated_tokens(rng):
    ids = np.array([[0, 2, 2], [1, 2, 0]])
    table = rng.normal(size=(4, 3))
    up = rng.normal(size=(2, 3, 3))

    def obj():
        return float((token_embedding_forward(ids, table) * up).sum())

    check(obj, [(table, token_embedding_backward(ids, 4, up))])


def test_positional_code_and_its_backward(rng):
    code = sinusoidal_positions(6, 4)
    assert code.shape == (6, 4) and np.allclose(code[0], [0, 1, 0, 1])
    x, pos, up = rng.normal(size=(2, 5, 4)), rng.normal(size=(6, 4)), rng.normal(size=(2, 5, 4))

    def obj():
        return float((positional_forward(x, pos) * up).sum())

    check(obj, [(pos, positional_backward(up, 6))])


def test_layer_norm_backward(rng):
    x, g, b = rng.normal(size=(2, 3, 5)), rng.normal(size=5), rng.normal(size=5)
    up = rng.normal(size=(2, 3, 5))
    y, _ = layer_norm_forward(x, g, b)
    np.testing.assert_allclose(((y - b) / g).mean(axis=-1), 0, atol=1e-12)

    def obj():
        return float((layer_norm_forward(x, g, b)[0] * up).sum())

    gx, gg, gb = layer_norm_backward(layer_norm_forward(x, g, b)[1], g, up)
    check(obj, [(x, gx), (g, gg), (b, gb)])


def test_gelu_and_softmax_backward(rng):
    x, up = rng.normal(size=(3, 4)) * 2, rng.normal(size=(3, 4))
    check(lambda: float((gelu_forward(x) * up).sum()), [(x, gelu_backward(x, up))])
    s = rng.normal(size=(3, 4))
    check(lambda: float((softmax_forward(s) * up).sum()), [(s, softmax_backward(softmax_forward(s), up))])


def test_attention_backward(rng):
    d, heads = 4, 2
    x = rng.normal(size=(2, 3, d))
    wqkv, bqkv = rng.normal(size=(d, 3 * d)), rng.normal(size=3 * d)
    wo, bo = rng.normal(size=(d, d)), rng.normal(size=d)
    up = rng.normal(size=(2, 3, d))

    def obj():
        return float((attention_forward(x, wqkv, bqkv, wo, bo, heads)[0] * up).sum())

    _, cache = attention_forward(x, wqkv, bqkv, wo, bo, heads)
    gx, g = attention_backward(cache, wqkv, wo, heads, up)
    check(obj, [(x, gx), (wqkv, g["wqkv"]), (bqkv, g["bqkv"]), (wo, g["wo"]), (bo, g["bo"])])


def test_attention_mixes_tokens_and_heads_are_independent(rng):
    d = 4
    x = rng.normal(size=(1, 3, d))
    w = [rng.normal(size=s) for s in ((d, 3 * d), (3 * d,), (d, d), (d,))]
    y, _ = attention_forward(x, *w, heads=2)
    x2 = x.copy()
    x2[0, 2] += 1.0
    y2, _ = attention_forward(x2, *w, heads=2)
    assert not np.allclose(y[0, 0], y2[0, 0])  # token 0 sees token 2


def test_mlp_backward(rng):
    x = rng.normal(size=(2, 3, 4))
    w1, b1, w2, b2 = rng.normal(size=(4, 6)), rng.normal(size=6), rng.normal(size=(6, 4)), rng.normal(size=4)
    up = rng.normal(size=(2, 3, 4))

    def obj():
        return float((mlp_forward(x, w1, b1, w2, b2)[0] * up).sum())

    gx, g = mlp_backward(mlp_forward(x, w1, b1, w2, b2)[1], w1, w2, up)
    check(obj, [(x, gx), (w1, g["w1"]), (b1, g["b1"]), (w2, g["w2"]), (b2, g["b2"])])


def test_block_backward_covers_every_parameter(rng):
    p = {k: rng.normal(size=s) * 0.7 for k, s in block_shapes(4, 6).items()}
    assert tuple(p) == BLOCK_PARAMS
    x, up = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))

    def obj():
        return float((block_forward(x, p, 2)[0] * up).sum())

    gx, grads = block_backward(block_forward(x, p, 2)[1], p, 2, up)
    assert set(grads) == set(BLOCK_PARAMS)
    check(obj, [(x, gx)] + [(p[k], grads[k]) for k in BLOCK_PARAMS])


@pytest.mark.parametrize("how", ["mean", "last"])
def test_pool_backward(rng, how):
    x, up = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 4))
    check(lambda: float((pool_forward(x, how) * up).sum()), [(x, pool_backward(up, 3, how))])


def test_unknown_pooling_is_named():
    with pytest.raises(ValueError, match="max"):
        pool_forward(np.zeros((1, 2, 3)), "max")
