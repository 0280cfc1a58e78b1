"""The simulated ring: backward against finite differences, determinism, physics sanity."""

import numpy as np
import pytest

from pgt.kernels import RingParams, directions, ring_backward, ring_forward
from pgt.kernels._ring import NOISE_STREAM, detector_noise


def test_shapes_and_non_negative_detector_power():
    u = np.random.default_rng(0).uniform(-1, 1, (7, 16))
    feats = ring_forward(RingParams(), u)
    assert feats.shape == (7, 16, 24)
    assert (feats >= 0).all()


@pytest.mark.parametrize("params", [RingParams(), RingParams(nodes=5, gain=0.95, nu=3.0, tap=0.4)])
def test_backward_matches_finite_differences(params):
    rng = np.random.default_rng(1)
    u = rng.uniform(-1, 1, (3, 6))
    upstream = rng.normal(size=(3, 6, params.nodes))
    _, cache = ring_forward(params, u, keep_cache=True)
    grad = ring_backward(params, cache, upstream)
    numeric = np.zeros_like(u)
    eps = 1e-6
    for i in np.ndindex(u.shape):
        up, down = u.copy(), u.copy()
        up[i] += eps
        down[i] -= eps
        numeric[i] = ((ring_forward(params, up) - ring_forward(params, down)) * upstream).sum() / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


def test_samples_are_independent_and_deterministic():
    u = np.random.default_rng(2).uniform(-1, 1, (4, 10))
    params = RingParams()
    whole = ring_forward(params, u)
    np.testing.assert_array_equal(whole, ring_forward(params, u))
    np.testing.assert_allclose(ring_forward(params, u[2:3]), whole[2:3], rtol=1e-12)


def test_fading_memory_forgets_old_inputs():
    """An input step's influence decays over later round trips (gain below threshold)."""
    params = RingParams()
    rng = np.random.default_rng(3)
    base = rng.uniform(-1, 1, (1, 40))
    kicked = base.copy()
    kicked[0, 0] += 0.5
    diff = np.abs(ring_forward(params, kicked) - ring_forward(params, base))[0].sum(axis=1)
    assert diff[0] > 0
    assert diff[30] < 1e-3 * diff[0]


def test_noise_is_counter_based_and_relative():
    """Noise is a pure function of (seed, tick): equal for equal clocks, fresh per tick."""
    params = RingParams(noise=0.02)
    u = np.random.default_rng(4).uniform(-1, 1, (50, 16))
    clean = ring_forward(RingParams(), u)
    a = ring_forward(params, u, seed=9, tick=3)
    np.testing.assert_array_equal(a, ring_forward(params, u, seed=9, tick=3))
    assert not np.array_equal(a, ring_forward(params, u, seed=9, tick=4))
    assert not np.array_equal(a, ring_forward(params, u, seed=10, tick=3))
    ratio = a / np.where(clean > 0, clean, 1)
    assert 0.015 < np.std(ratio[clean > 1e-6]) < 0.025
    with pytest.raises(ValueError, match="needs a seed"):
        ring_forward(params, u)


def test_noise_is_the_philox_gaussian_of_seed_and_tick():
    z = detector_noise(9, 3, (2, 5, 4))
    expected = directions(9, 3, [0], 40, "gaussian", stream=NOISE_STREAM)[0]
    np.testing.assert_array_equal(z.ravel(), expected)
    u = np.random.default_rng(5).uniform(-1, 1, (2, 5))
    noisy = ring_forward(RingParams(nodes=4, noise=0.1), u, seed=9, tick=3)
    np.testing.assert_allclose(noisy, ring_forward(RingParams(nodes=4), u) * (1 + 0.1 * z), rtol=1e-15)


def test_float32_inputs_compute_in_float32():
    params = RingParams(noise=0.01, drift=0.1, drift_period=7)
    u = np.random.default_rng(6).uniform(-1, 1, (8, 12))
    single, (_, mask, steps, _, _) = ring_forward(params, u.astype(np.float32), seed=1, tick=2,
                                                 keep_cache=True)
    assert single.dtype == mask.dtype == np.float32
    assert {a.dtype for step in steps for a in step} == {np.dtype(np.float32)}
    np.testing.assert_allclose(single, ring_forward(params, u, seed=1, tick=2), rtol=1e-4, atol=1e-6)


def test_drift_changes_gain_with_the_ring_clock():
    params = RingParams(drift=0.05, drift_period=100)
    assert params.gain_at(0) == pytest.approx(params.gain)
    assert params.gain_at(25) == pytest.approx(params.gain * 1.05)
    u = np.full((1, 8), 0.5)
    assert not np.array_equal(ring_forward(params, u, tick=0), ring_forward(params, u, tick=25))


@pytest.mark.parametrize("bad", [{"nodes": 0}, {"gain": -0.1}, {"p_sat": 0}, {"tap": 0.7}, {"noise": -1}])
def test_bad_parameters_are_named(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        RingParams(**bad)


def test_the_map_s_gradients_wrt_its_physical_quantities_match_finite_differences():
    from pgt.kernels._ring import MAP_SCALARS, ring_map, ring_map_backward

    rng = np.random.default_rng(11)
    u = rng.uniform(-1, 1, (5, 7))
    mask = rng.uniform(-1, 1, 6)
    scalars = {"gain": 0.8, "kappa": 0.6, "inject": 0.5, "bias": 0.2, "p_sat": 1.3,
               "nu": 0.7, "tap": 0.2}
    weights = rng.normal(size=(5, 7, 6))

    def objective(m, s):
        return float((ring_map(u, m, **s) * weights).sum())

    _, cache = ring_map(u, mask, keep_cache=True, **scalars)
    grad_u, grads = ring_map_backward(cache, weights, wrt_params=True)
    assert np.array_equal(grad_u, ring_map_backward(cache, weights)[0])
    h = 1e-6
    for name in MAP_SCALARS:
        up, down = dict(scalars), dict(scalars)
        up[name] += h
        down[name] -= h
        numeric = (objective(mask, up) - objective(mask, down)) / (2 * h)
        assert grads[name] == pytest.approx(numeric, rel=1e-5, abs=1e-7), name
    for j in range(6):
        e = np.zeros(6)
        e[j] = h
        numeric = (objective(mask + e, scalars) - objective(mask - e, scalars)) / (2 * h)
        assert grads["mask"][j] == pytest.approx(numeric, rel=1e-5, abs=1e-7), j
