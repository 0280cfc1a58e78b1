"""The generated regression benchmarks: NARMA10, Mackey–Glass and their windows."""

import numpy as np
import pytest
from pgt import _tasks
from pgt._tasks import mackey_glass, mackey_glass_task, narma10, narma10_task, windows


def narma_step(y, u, t):
    """The NARMA10 recurrence, written out independently: y[t] from the past."""
    return (0.3 * y[t - 1] + 0.05 * y[t - 1] * np.sum(y[t - 10:t])
            + 1.5 * u[t - 10] * u[t - 1] + 0.1)


# --- NARMA10 ---------------------------------------------------------------------

def test_narma10_is_deterministic_and_seeded():
    u, y = narma10(500, seed=3)
    u2, y2 = narma10(500, seed=3)
    assert u.tobytes() == u2.tobytes() and y.tobytes() == y2.tobytes()
    u3, y3 = narma10(500, seed=4)
    assert not np.array_equal(u, u3) and not np.array_equal(y, y3)


def test_narma10_shapes_and_input_range():
    u, y = narma10(321, seed=0, washout=50)
    assert u.shape == y.shape == (321,)
    assert u.dtype == y.dtype == np.float64
    assert u.min() >= 0.0 and u.max() <= 0.5


@pytest.mark.parametrize("seed", range(5))
def test_narma10_default_seeds_stay_finite(seed):
    _u, y = narma10(4000, seed)
    assert np.all(np.isfinite(y)) and 0.0 < y.min() and y.max() < 1.5


def test_narma10_satisfies_its_recurrence_on_the_returned_arrays():
    u, y = narma10(1000, seed=1)
    predicted = np.array([narma_step(y, u, t) for t in range(10, len(y))])
    np.testing.assert_allclose(y[10:], predicted, rtol=1e-13, atol=0)


def test_narma10_washout_drops_the_start():
    u, y = narma10(300, seed=2, washout=0)
    assert np.all(y[:10] == 0.0)  # the system starts at rest
    u2, y2 = narma10(200, seed=2, washout=100)
    assert np.array_equal(u[100:], u2) and np.array_equal(y[100:], y2)


def test_narma10_divergence_raises(monkeypatch):
    monkeypatch.setattr(_tasks, "NARMA_LIMIT", 0.3)
    with pytest.raises(ValueError, match="diverged"):
        narma10(400, seed=0)


@pytest.mark.parametrize("kwargs", [{"length": 0}, {"length": 10, "washout": -1}])
def test_narma10_bad_sizes(kwargs):
    with pytest.raises(ValueError, match="narma10"):
        narma10(seed=0, **kwargs)


# --- Mackey–Glass ----------------------------------------------------------------

def test_mackey_glass_is_deterministic_and_seeded():
    x = mackey_glass(300, seed=5)
    assert x.tobytes() == mackey_glass(300, seed=5).tobytes()
    assert not np.array_equal(x, mackey_glass(300, seed=6))
    assert x.shape == (300,) and x.dtype == np.float64


def test_mackey_glass_tau17_is_bounded_chaotic_and_has_the_known_mean():
    x = mackey_glass(3000, seed=0)
    assert 0.2 < x.min() and x.max() < 1.5
    assert 0.85 < x.mean() < 1.0  # the attractor's mean, about 0.9
    # not a cycle: the heights of the local maxima keep changing
    peaks = x[1:-1][(x[1:-1] > x[:-2]) & (x[1:-1] > x[2:])]
    assert len(np.unique(np.round(peaks, 2))) > 20
    # sensitive to the start: another seed is uncorrelated a few thousand units on
    other = mackey_glass(3000, seed=1)
    assert abs(np.corrcoef(x[1000:], other[1000:])[0, 1]) < 0.5


def test_mackey_glass_below_the_chaotic_range_settles():
    x = mackey_glass(300, seed=0, tau=2.0)  # a short delay: the fixed point x = 1 is stable
    np.testing.assert_allclose(x[-50:], 1.0, atol=1e-6)


def test_mackey_glass_converges_in_dt():
    coarse = mackey_glass(60, seed=2, washout=0)
    fine = mackey_glass(60, seed=2, dt=0.01, washout=0)
    np.testing.assert_allclose(coarse, fine, atol=1e-4)


def test_mackey_glass_satisfies_the_delay_equation():
    dt, lag = 0.1, 170  # sample every step, so the delay is 170 samples
    x = mackey_glass(1500, seed=0, dt=dt, sample_every=dt, washout=0)
    t = np.arange(lag + 1, len(x) - 1)
    derivative = (x[t + 1] - x[t - 1]) / (2 * dt)
    d = x[t - lag]
    rhs = 0.2 * d / (1 + d ** 10) - 0.1 * x[t]
    np.testing.assert_allclose(derivative, rhs, atol=2e-3)


def test_mackey_glass_sampling_is_a_subsample():
    every3 = mackey_glass(20, seed=0, sample_every=3.0, washout=10)  # t = 30, 33, …
    every1 = mackey_glass(60, seed=0, washout=30)  # t = 30, 31, …
    assert every3.shape == (20,)
    np.testing.assert_array_equal(every3, every1[::3])


@pytest.mark.parametrize("kwargs", [
    {"length": 0}, {"length": 10, "washout": -1}, {"length": 10, "tau": 0.0},
    {"length": 10, "dt": 0.0}, {"length": 10, "dt": -0.1}, {"length": 10, "sample_every": 0.25},
    {"length": 10, "sample_every": 0.0}, {"length": 10, "sample_every": float("nan")},
    {"length": 10, "tau": 0.05},  # a delay shorter than one step
])
def test_mackey_glass_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="mackey_glass"):
        mackey_glass(seed=0, **kwargs)


# --- windows and the ready-made tasks --------------------------------------------

def test_windows_alignment():
    series = np.arange(10.0)
    x, y = windows(series[:-1], series[1:], 4)
    assert x.shape == (6, 4) and y.shape == (6,)
    np.testing.assert_array_equal(x[0], [0, 1, 2, 3])
    np.testing.assert_array_equal(y, x[:, -1] + 1)  # the value right after each window
    x[0, 0] = -1  # a copy, not a view
    assert series[0] == 0


@pytest.mark.parametrize("window", [0, 11])
def test_windows_must_fit(window):
    with pytest.raises(ValueError, match="window"):
        windows(np.zeros(10), np.zeros(10), window)


def test_windows_needs_one_length():
    with pytest.raises(ValueError, match="one length"):
        windows(np.zeros(10), np.zeros(9), 3)


def test_mackey_glass_task_targets_are_the_next_sample():
    x, y = mackey_glass_task(200, 8, seed=0)
    assert x.shape == (200, 8) and y.shape == (200,)
    np.testing.assert_array_equal(x[1:, :-1], x[:-1, 1:])  # windows slide by one
    np.testing.assert_array_equal(y[:-1], x[1:, -1])  # row i's target ends row i+1
    series = mackey_glass(208, seed=0)
    np.testing.assert_array_equal(x[:, 0], series[:200])
    np.testing.assert_array_equal(y, series[8:])


def test_mackey_glass_task_passes_options():
    x, _ = mackey_glass_task(20, 4, seed=0, sample_every=3.0)
    np.testing.assert_array_equal(x[:, 0], mackey_glass(24, seed=0, sample_every=3.0)[:20])


def test_narma10_task_target_is_the_output_after_the_window():
    x, y = narma10_task(300, 12, seed=0)
    assert x.shape == (300, 12) and y.shape == (300,)
    # y[i] = y(t+1) where the window ends at u(t): the recurrence links consecutive
    # targets through the window's last input u(t) and u(t-9) ten places back in it
    i = np.arange(10, 300)
    expected = (0.3 * y[i - 1] + 0.05 * y[i - 1] * np.array([y[k - 10:k].sum() for k in i])
                + 1.5 * x[i, -10] * x[i, -1] + 0.1)
    np.testing.assert_allclose(y[i], expected, rtol=1e-13, atol=0)


def test_tasks_are_deterministic_and_reject_bad_sizes():
    a, b = narma10_task(50, 5, seed=1), narma10_task(50, 5, seed=1)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    for task in (narma10_task, mackey_glass_task):
        with pytest.raises(ValueError):
            task(0, 5, seed=0)
        with pytest.raises(ValueError):
            task(10, 0, seed=0)
