"""GPU results equal the CPU reference: CuPy runs of the xp-generic kernels and the fused
kernels against NumPy (``pytest -m gpu``; skipped where CuPy or a CUDA device is missing).

Tolerances (issue #6): relative error below 1e-5 in float64 and 1e-3 in float32 for
the ring; Philox words and Rademacher signs bit for bit; Gaussians and sums up to
the last-bit differences of CUDA's and NumPy's libm and fused multiply-add.
"""

import numpy as np
import pytest
import trio

from pgt.backends._sim import SimRing
from pgt.kernels import (
    RingParams,
    accumulate,
    batched_dense_forward,
    dense_backward,
    detector_noise,
    directions,
    fused_accumulate,
    fused_ring_forward,
    philox4x32,
    ring_backward,
    ring_forward,
    softmax_cross_entropy,
    softmax_cross_entropy_backward,
    tanh_backward,
    tanh_forward,
)
from pgt.kernels._fused import accumulate_twin, ring_twin
from pgt.kernels._philox import _words

pytestmark = pytest.mark.gpu

RING_TOL = {np.float64: 1e-5, np.float32: 1e-3}
RINGS = [
    RingParams(),
    RingParams(nodes=5, gain=0.95, nu=3.0, tap=0.4, bias=0.3, noise=0.03, drift=0.1, drift_period=7),
    RingParams(nodes=1, tap=0.0, noise=0.01),
    RingParams(nodes=300, tap=0.1),       # one sample per block
    RingParams(nodes=1024, noise=0.02),   # the largest block
]


@pytest.fixture(scope="module")
def cp():
    cupy = pytest.importorskip("cupy")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, or a broken one
        pytest.skip(f"CuPy finds no CUDA device ({exc})")
    if count < 1:
        pytest.skip("CuPy finds no CUDA device")
    return cupy


def rel_err(got, expected) -> float:
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def inputs(batch, steps, dtype, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (batch, steps)).astype(dtype)


@pytest.mark.parametrize("params", RINGS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ring_plain_and_fused_match_the_cpu(cp, params, dtype):
    u = inputs(1001 if params.nodes < 300 else 37, 9, dtype)   # a partial last block
    cpu = ring_forward(params, u, tick=5, seed=3)
    plain = ring_forward(params, cp.asarray(u), tick=5, seed=3)
    fused = fused_ring_forward(params, cp.asarray(u), tick=5, seed=3)
    assert plain.dtype == fused.dtype == dtype
    assert rel_err(plain.get(), cpu) < RING_TOL[dtype]
    assert rel_err(fused.get(), cpu) < RING_TOL[dtype]
    assert rel_err(fused.get(), ring_twin(params, u, tick=5, seed=3)) < RING_TOL[dtype]


def test_fused_ring_handles_long_sequences_and_empty_batches(cp):
    u = inputs(3, 500, np.float64)
    assert rel_err(fused_ring_forward(RingParams(), cp.asarray(u)).get(), ring_forward(RingParams(), u)) < 1e-5
    assert fused_ring_forward(RingParams(), cp.zeros((0, 4))).shape == (0, 4, 24)


def test_ring_backward_matches_the_cpu(cp):
    params = RingParams(nodes=7, bias=0.2)
    u = inputs(50, 6, np.float64)
    upstream = np.random.default_rng(1).normal(size=(50, 6, 7))
    _, cache = ring_forward(params, u, keep_cache=True)
    _, gpu_cache = ring_forward(params, cp.asarray(u), keep_cache=True)
    gpu = ring_backward(params, gpu_cache, cp.asarray(upstream)).get()
    assert rel_err(gpu, ring_backward(params, cache, upstream)) < 1e-10


def test_philox_words_and_rademacher_signs_are_bit_identical(cp):
    words = philox4x32(cp, *[cp.array([0xFFFFFFFF], dtype=cp.uint64)] * 4, 0xFFFFFFFF, 0xFFFFFFFF)
    assert [int(w[0]) for w in words] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    seed = 2**40 + 12345
    np.testing.assert_array_equal(_words(cp, seed, 1, 77, [0, 5, 9], 4099).get(),
                                  _words(np, seed, 1, 77, [0, 5, 9], 4099))
    np.testing.assert_array_equal(directions(seed, 77, range(6), 4099, xp=cp).get(),
                                  directions(seed, 77, range(6), 4099))


def test_gaussian_directions_and_noise_are_identical(cp):
    """Same words, same Box-Muller: equal up to the libraries' last-bit libm differences."""
    np.testing.assert_allclose(directions(7, 3, range(4), 4099, "gaussian", xp=cp).get(),
                               directions(7, 3, range(4), 4099, "gaussian"), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(detector_noise(7, 123, (40, 16, 24), xp=cp).get(),
                               detector_noise(7, 123, (40, 16, 24)), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("per_element", [False, True])
def test_accumulate_plain_and_fused_match_the_cpu(cp, dist, dtype, per_element):
    size, k = 100_003, 9
    rng = np.random.default_rng(2)
    coeffs = rng.normal(size=(k, size) if per_element else k)
    cpu = accumulate(5, 6, coeffs, size, dist, stream=1, dtype=dtype)
    plain = accumulate(5, 6, cp.asarray(coeffs), size, dist, stream=1, xp=cp, dtype=dtype)
    fused = fused_accumulate(5, 6, coeffs, size, dist, stream=1, dtype=dtype)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert fused.dtype == dtype
    assert rel_err(plain.get(), cpu) < tol
    assert rel_err(fused.get(), cpu) < tol
    assert rel_err(fused.get(), accumulate_twin(5, 6, coeffs, size, dist, stream=1, dtype=dtype)) < tol


def test_layers_match_the_cpu(cp):
    rng = np.random.default_rng(3)
    x, w, b = rng.normal(size=(4, 32, 10)), rng.normal(size=(4, 10, 6)), rng.normal(size=(4, 6))
    labels = rng.integers(0, 6, 32)
    logits = tanh_forward(batched_dense_forward(x, w, b))
    losses, probs = softmax_cross_entropy(logits, labels)
    grad = tanh_backward(logits, softmax_cross_entropy_backward(probs, labels, np.ones((4, 32))))
    gx = [cp.asarray(a) for a in (x, w, b, labels)]
    g_logits = tanh_forward(batched_dense_forward(*gx[:3]))
    g_losses, g_probs = softmax_cross_entropy(g_logits, gx[3])
    g_grad = tanh_backward(g_logits, softmax_cross_entropy_backward(g_probs, gx[3], cp.ones((4, 32))))
    for got, expected in ((g_losses, losses), (g_grad, grad)):
        assert rel_err(got.get(), expected) < 1e-12
    for got, expected in zip(dense_backward(gx[0][0], gx[1][0], g_grad[0]),
                             dense_backward(x[0], w[0], grad[0]), strict=True):
        assert rel_err(got.get(), expected) < 1e-12


@pytest.mark.parametrize("fused", [True, False])
def test_sim_ring_on_the_gpu_returns_host_features_equal_to_the_cpu(cp, fused):
    params = RingParams(noise=0.02, drift=0.01)
    u = inputs(64, 16, np.float64)
    cpu, gpu = SimRing(params, seed=4), SimRing(params, seed=4, device="gpu", fused=fused)
    assert gpu.fused is fused
    for _ in range(2):   # the clock advances alike
        expected, got = trio.run(cpu.forward, u), trio.run(gpu.forward, u)
        assert type(got) is np.ndarray and rel_err(got, expected) < 1e-5
    grad = np.random.default_rng(5).normal(size=expected.shape)
    vjp = gpu.vjp(u, grad)
    assert type(vjp) is np.ndarray and rel_err(vjp, cpu.vjp(u, grad)) < 1e-10


async def test_waiting_for_the_gpu_leaves_the_trio_loop_free(cp):
    # Queue a few tens of milliseconds of GPU work; a task ticking every millisecond
    # keeps ticking while gpu_work_done waits for it, and the work is done after.
    from pgt.backends._sim import gpu_work_done

    a = cp.random.default_rng(0).random((4096, 4096))
    (a @ a).sum().item()   # warm up the library
    ticks = []

    async def tick():
        while True:
            ticks.append(trio.current_time())
            await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        await trio.sleep(0.005)
        t0 = trio.current_time()
        for _ in range(40):
            b = a @ a
        await gpu_work_done(cp)
        took = trio.current_time() - t0
        nursery.cancel_scope.cancel()
    assert cp.cuda.get_current_stream().done and b.shape == (4096, 4096)
    during = [t for t in ticks if t0 < t < t0 + took]
    assert took > 0.005 and len(during) >= 0.3 * took / 0.001, (took, len(during))
