"""What a real ring and detector add: a reference line, an additive noise floor, a
slow 1/f-like gain walk, ADC quantisation and a per-sample clock; and the memory
preset's capacities with the physics behind the gain-memory curve."""

from __future__ import annotations

import numpy as np
import pytest

from pgt.kernels import RingParams, gain_path, ring_forward
from pgt.kernels._memory import memory_capacity, parity_capacity
from pgt.kernels._ring import ring_map, ring_map_backward


def test_the_reference_line_s_backward_matches_finite_differences():
    rng = np.random.default_rng(0)
    u = rng.uniform(-1, 1, (4, 6))
    mask = rng.uniform(-1, 1, 5)
    s = {"gain": 0.8, "kappa": 0.3, "inject": 0.5, "bias": 0.0, "p_sat": 2.0, "nu": 0.4,
         "tap": 0.25, "ref": 0.9, "ref_phase": 0.7, "detune": 0.3}
    w = rng.normal(size=(4, 6, 5))
    _, cache = ring_map(u, mask, keep_cache=True, **s)
    grad_u, _ = ring_map_backward(cache, w)
    h = 1e-6
    for b, i in [(0, 0), (2, 3), (3, 5)]:
        e = np.zeros_like(u)
        e[b, i] = h
        num = ((ring_map(u + e, mask, **s) - ring_map(u - e, mask, **s)) * w).sum() / (2 * h)
        assert grad_u[b, i] == pytest.approx(num, rel=1e-5, abs=1e-8)


def test_the_reference_line_makes_the_reading_linear_in_the_amplitude():
    u = np.random.default_rng(1).uniform(-1, 1, (3, 4))
    plain = ring_forward(RingParams(nodes=4), u)
    with_ref = ring_forward(RingParams(nodes=4, ref=2.0), u)
    # |a + r|² = |a|² + 2 r Re(a) + r²: the difference is odd in a (the input's sign)
    flipped = ring_forward(RingParams(nodes=4, ref=2.0), -u)
    assert not np.allclose(with_ref, flipped)
    assert np.abs(with_ref - plain - 4.0).max() > 0.01   # more than the carrier's r²


def test_the_noise_floor_is_additive_seeded_and_zero_mean():
    u = np.zeros((200, 8))
    base = ring_forward(RingParams(nodes=6, bias=0.5), u)
    noisy = ring_forward(RingParams(nodes=6, bias=0.5, floor=0.01), u, seed=4, tick=9)
    again = ring_forward(RingParams(nodes=6, bias=0.5, floor=0.01), u, seed=4, tick=9)
    np.testing.assert_array_equal(noisy, again)
    diff = noisy - base
    assert abs(diff.mean()) < 1e-3 and diff.std() == pytest.approx(0.01, rel=0.05)
    with pytest.raises(ValueError, match="needs a seed"):
        ring_forward(RingParams(floor=0.01), u)


def test_the_adc_quantises_and_clips():
    u = np.random.default_rng(2).uniform(-1, 1, (10, 8))
    q = ring_forward(RingParams(bits=6, adc_max=0.5, bias=0.3), u)
    step = 0.5 / 63
    assert q.max() <= 0.5 + 1e-12 and q.min() >= 0
    np.testing.assert_allclose(q / step, np.round(q / step), atol=1e-9)


def test_the_gain_walk_is_continuous_across_calls_and_has_its_size():
    p = RingParams(walk=0.05)
    whole, state = gain_path(p, 0, 3000, seed=7, walk=None)
    first, mid = gain_path(p, 0, 1000, seed=7, walk=None)
    # Two calls give the path one call gives, except that each call draws its own
    # innovations from (seed, tick): the second piece starts from the first's state.
    second, end = gain_path(p, 1000, 2000, seed=7, walk=mid)
    np.testing.assert_array_equal(first, whole[:1000])
    assert np.isfinite(second).all() and len(second) == 2000
    long, _ = gain_path(p, 0, 200_000, seed=8, walk=None)
    rel = long / p.gain - 1
    assert 0.02 < rel.std() < 0.08                       # about walk = 0.05
    # 1/f-like: slow components dominate; the spread over 10,000 ticks is far larger
    # than the step-to-step change
    assert np.abs(np.diff(rel)).mean() < 0.1 * rel.std()


def test_a_per_sample_clock_lets_probes_in_one_call_see_different_drift():
    import trio

    from pgt.backends import open_reservoir

    async def rows(url):
        async with open_reservoir(url, seed=0) as ring:
            u = np.tile(np.tanh(np.linspace(-1, 1, 16)), (2, 1))   # the same row twice
            return await ring.forward(u)

    same = trio.run(rows, "sim://ring?drift=0.05&drift_period=4")
    moved = trio.run(rows, "sim://ring?drift=0.05&drift_period=4&clock=sample")
    np.testing.assert_array_equal(same[0], same[1])
    assert not np.array_equal(moved[0], moved[1])


def test_the_memory_preset_remembers_as_real_rings_do():
    preset = RingParams.preset("memory")
    mc = np.mean([memory_capacity(preset, seed=s) for s in range(3)])
    pc = np.mean([parity_capacity(preset, seed=s) for s in range(3)])
    assert 4.7 <= mc <= 5.5        # Watt, Kostylev & Ustinov 2021: 4.68; record 5.53
    assert 1.5 <= pc <= 1.8        # the published rings' 1.5-1.7 (1.74)


def test_memory_against_gain_follows_the_diode_s_physics():
    # A plain square-law diode reads |a|², even in the amplitude: past inputs reach a
    # linear readout only through the ring's nonlinear terms, which more loop gain
    # drives into saturation, so beyond a point more gain means less memory. Read
    # through a reference line the reading is linear in the amplitude: the ring is a
    # fading-memory filter whose memory grows with the gain, until near threshold.
    def mc(params):
        return memory_capacity(params, length=3000, seed=0)

    plain = [mc(RingParams(gain=g)) for g in (0.5, 0.7, 0.95)]
    referenced = [mc(RingParams.preset("memory", gain=g)) for g in (0.3, 0.5, 0.7, 0.85)]
    assert plain[2] < plain[1]
    assert referenced == sorted(referenced) and referenced[-1] > 2.5 * plain[1]
