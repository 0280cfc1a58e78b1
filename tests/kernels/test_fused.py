"""The fused kernels' NumPy twins equal the reference kernels (runs without a GPU).

A twin does what its CUDA kernel does, thread by thread: per-element Philox blocks,
neighbours read by index, one loop over k. These tests pin that arithmetic to
``ring_forward`` and ``accumulate``; tests/kernels/test_gpu.py pins the kernels to it.
"""

import numpy as np
import pytest

from pgt.kernels import RingParams, accumulate, directions, ring_forward
from pgt.kernels._fused import (
    MAX_NODES,
    _block_shape,
    accumulate_twin,
    direction_at_twin,
    fused_ring_supported,
    ring_twin,
)

RINGS = [
    RingParams(),
    RingParams(nodes=5, gain=0.95, nu=3.0, tap=0.4, bias=0.3, noise=0.03, drift=0.1, drift_period=7),
    RingParams(nodes=1, tap=0.0, noise=0.01),
    RingParams(nodes=2, tap=0.5),
]


@pytest.mark.parametrize("params", RINGS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ring_twin_equals_ring_forward(params, dtype):
    u = np.random.default_rng(0).uniform(-1, 1, (9, 7)).astype(dtype)
    expected = ring_forward(params, u, tick=3, seed=11)
    got = ring_twin(params, u, tick=3, seed=11)
    assert got.dtype == expected.dtype == dtype
    np.testing.assert_allclose(got, expected, rtol=1e-13 if dtype == np.float64 else 1e-6, atol=0)


def test_ring_twin_noise_needs_a_seed():
    with pytest.raises(ValueError, match="needs a seed"):
        ring_twin(RingParams(noise=0.1), np.zeros((1, 2)))


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
def test_per_element_philox_equals_directions(dist):
    """The kernels' element-wise indexing (block i//4, word i%4, Box-Muller pairs)."""
    expected = directions(2**40 + 7, 5, [0, 3], 1003, dist, stream=9)
    index = np.arange(1003)
    for row, k in zip(expected, (0, 3), strict=True):
        got = direction_at_twin(2**40 + 7, 5, k, index, dist, stream=9)
        if dist == "rademacher":
            np.testing.assert_array_equal(got, row)
        else:
            np.testing.assert_allclose(got, row, rtol=1e-13, atol=1e-15)
    scattered = np.array([[1002, 0], [513, 6]])
    np.testing.assert_allclose(direction_at_twin(2**40 + 7, 5, 3, scattered, dist, stream=9),
                               expected[1][scattered], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_accumulate_twin_equals_accumulate(dist, dtype):
    rng = np.random.default_rng(1)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == np.float64 else {"rtol": 1e-5, "atol": 1e-5}
    for coeffs in (rng.normal(size=9), rng.normal(size=(9, 101))):
        expected = accumulate(4, 8, coeffs, 101, dist, stream=1, dtype=dtype, chunk=1)
        got = accumulate_twin(4, 8, coeffs, 101, dist, stream=1, dtype=dtype)
        assert got.dtype == dtype
        np.testing.assert_allclose(got, expected, **tol)


def test_ring_block_shape_holds_whole_samples():
    for nodes in (1, 5, 24, 255, 256, 257, MAX_NODES):
        per_block, threads = _block_shape(nodes)
        assert threads == per_block * nodes and per_block >= 1 and threads <= MAX_NODES
    assert fused_ring_supported(RingParams(nodes=MAX_NODES))
    assert not fused_ring_supported(RingParams(nodes=MAX_NODES + 1))
