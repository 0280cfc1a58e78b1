"""Sequence tasks generated in-process, so they ship offline and are seeded.

``delayed_parity``: a sequence of random bits s_0 … s_{T-1}, one per token; the label
is the parity (XOR) of ``bits`` consecutive bits ending ``delay`` steps before the
end, y = s_{T-1-delay} ⊕ … ⊕ s_{T-delay-bits}. A model that reads the sequence
token by token must remember those bits until the end and combine them
nonlinearly: the classic parity-check test of a reservoir's memory.

``narma10``, ``mackey_glass``: the two standard one-step-ahead regression benchmarks
of reservoir computing (NARMA10 system identification, Mackey–Glass tau = 17
prediction); ``windows`` and the ``*_task`` helpers cut them into sliding windows.
"""

from __future__ import annotations

import numpy as np

SAMPLES = 2000  # about the size of the digits set, so runs cost the same


def delayed_parity(seq_len: int, delay: int, bits: int, seed: int,
                   samples: int = SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """Features (samples, seq_len) in {0, 1} and parity labels (samples,).

    Raises ValueError when the parity window does not fit in the sequence.
    """
    if bits < 1 or delay < 0 or delay + bits > seq_len:
        raise ValueError(f"delayed parity: {bits} bits with delay {delay} "
                         f"do not fit a sequence of {seq_len}")
    rng = np.random.default_rng([seed, 0xB175])
    x = rng.integers(0, 2, (samples, seq_len))
    end = seq_len - delay
    y = x[:, end - bits:end].sum(axis=1) % 2
    return x.astype(np.float64), y.astype(np.int64)


# --- one-step-ahead regression benchmarks of reservoir computing ----------------
#
# Alignment, the same for both: ``windows(series, targets, w)`` wants
# ``targets[k]`` to be the value that comes right after ``series[k]``. Row i of its
# features is series[i : i+w] and its target is targets[i+w-1], the value right
# after the window's last entry.

NARMA_ORDER = 10
NARMA_LIMIT = 1e3  # |y| past this is divergence (stable NARMA10 stays below ~1.5)


def narma10(length: int, seed: int, washout: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Inputs u (length,) i.i.d. uniform on [0, 0.5] and the NARMA10 output y (length,).

    y[t] = 0.3 y[t-1] + 0.05 y[t-1] (y[t-1] + … + y[t-10]) + 1.5 u[t-10] u[t-1] + 0.1
    (Atiya & Parlos 2000), so y[t] depends on the inputs up to u[t-1], not on u[t]:
    one-step-ahead, predict y[t] from u[…, t-1], i.e. pair u[:-1] with y[1:]. The
    recurrence holds exactly on the returned arrays for t >= 10; the system starts
    from y = 0 and its first ``washout`` steps are discarded.

    Raises ValueError on bad sizes, and when the series diverges (|y| > 1e3), which
    NARMA10 rarely does; no remedy is applied, so pick another seed.
    """
    if length < 1 or washout < 0:
        raise ValueError(f"narma10: length {length} must be >= 1 and washout {washout} >= 0")
    total = washout + length
    u = np.random.default_rng([seed, 0x4A12]).uniform(0.0, 0.5, total)
    uu = u.tolist()  # Python floats: the loop is sequential, and faster on scalars
    y = [0.0] * total
    for t in range(NARMA_ORDER, total):
        prev = y[t - 1]
        y[t] = (0.3 * prev + 0.05 * prev * sum(y[t - NARMA_ORDER:t])
                + 1.5 * uu[t - NARMA_ORDER] * uu[t - 1] + 0.1)
        if not abs(y[t]) <= NARMA_LIMIT:  # also catches nan
            raise ValueError(f"narma10: diverged at step {t} with seed {seed}")
    return u[washout:].copy(), np.array(y[washout:], dtype=np.float64)


def mackey_glass(length: int, seed: int, tau: float = 17.0, beta: float = 0.2,
                 gamma: float = 0.1, n: float = 10.0, dt: float = 0.1,
                 sample_every: float = 1.0, washout: int = 500) -> np.ndarray:
    """Samples (length,) of dx/dt = beta x(t-tau) / (1 + x(t-tau)^n) - gamma x(t).

    Sample k is x(k * sample_every) counted from the end of the washout; the first
    ``washout`` samples are discarded. The initial history on [-tau, 0] is the constant
    1.2 + d, d seeded uniform on [-0.05, 0.05], so seeds give different trajectories
    (tau = 17 is chaotic: they decorrelate within a few hundred samples) while the
    history, a function of time alone, is the same for every dt.

    Integration: classic RK4 with fixed step dt. The delayed term does not depend on
    the current state, so each stage reads it from the stored grid history at
    t + c dt - tau (c = 0, 1/2, 1), linearly interpolated between grid points: the
    usual scheme for DDEs with a smooth history (error O(dt^2) from interpolation,
    below 1e-4 over the first samples at dt = 0.1; see the tests).

    Raises ValueError unless length >= 1, washout >= 0, dt > 0, tau >= dt, and
    sample_every is a positive whole multiple of dt.
    """
    if length < 1 or washout < 0:
        raise ValueError(f"mackey_glass: length {length} must be >= 1 and washout {washout} >= 0")
    if not (dt > 0 and tau >= dt):
        raise ValueError(f"mackey_glass: need dt > 0 and tau >= dt, got dt={dt}, tau={tau}")
    per_sample = round(sample_every / dt) if 0 < sample_every < np.inf else 0
    if per_sample < 1 or abs(per_sample * dt - sample_every) > 1e-9 * sample_every:
        raise ValueError(f"mackey_glass: sample_every {sample_every} is not a multiple of dt {dt}")
    lag = tau / dt
    hist = int(np.ceil(lag - 1e-9))  # grid points in the history before t = 0
    steps = (washout + length - 1) * per_sample
    rng = np.random.default_rng([seed, 0x3617])
    x = [0.0] * (hist + steps + 2)
    x[:hist + 1] = [1.2 + rng.uniform(-0.05, 0.05)] * (hist + 1)
    # stage c reads x at grid position k + c - lag, relative to step k's index hist + k
    taps = [(int(np.floor(hist + c - lag + 1e-9)), hist + c - lag) for c in (0.0, 0.5, 1.0)]
    taps = [(i, max(0.0, p - i)) for i, p in taps]

    def delayed(k: int, tap: tuple[int, float]) -> float:
        i, w = tap
        return x[k + i] if w == 0.0 else (1 - w) * x[k + i] + w * x[k + i + 1]

    for k in range(steps):
        d0, dh, d1 = (delayed(k, tap) for tap in taps)
        f0, fh, f1 = (beta * d / (1 + d ** n) for d in (d0, dh, d1))
        xk = x[hist + k]
        k1 = f0 - gamma * xk
        k2 = fh - gamma * (xk + 0.5 * dt * k1)
        k3 = fh - gamma * (xk + 0.5 * dt * k2)
        k4 = f1 - gamma * (xk + dt * k3)
        x[hist + k + 1] = xk + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    samples = np.array(x[hist:hist + steps + 1:per_sample], dtype=np.float64)
    return samples[washout:]


def windows(series: np.ndarray, targets: np.ndarray,
            window: int) -> tuple[np.ndarray, np.ndarray]:
    """Sliding windows (N, window) and their targets (N,), N = len(series) - window + 1.

    ``targets[k]`` must be the value to predict once ``series[k]`` is seen (the
    caller aligns it: (u[:-1], y[1:]) for NARMA10, (x[:-1], x[1:]) for a series
    predicted from itself). Row i is series[i : i+window], its target targets[i+window-1].
    Returns copies. Raises ValueError on unequal lengths or a window that does not fit.
    """
    series, targets = np.asarray(series), np.asarray(targets)
    if series.ndim != 1 or series.shape != targets.shape:
        raise ValueError(f"windows: series {series.shape} and targets {targets.shape} "
                         "must be 1-D of one length")
    if not 1 <= window <= len(series):
        raise ValueError(f"windows: window {window} does not fit a series of {len(series)}")
    rows = np.lib.stride_tricks.sliding_window_view(series, window).copy()
    return rows, targets[window - 1:].copy()


def narma10_task(length: int, window: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``length`` windows of inputs (length, window) and NARMA10 targets (length,).

    Row i holds u(t-window+1) … u(t) and its target is y(t+1), the first output the
    window's last input u(t) enters. Raises ValueError as narma10 and windows do.
    """
    if length < 1 or window < 1:
        raise ValueError(f"narma10_task: length {length} and window {window} must be >= 1")
    u, y = narma10(length + window, seed)
    return windows(u[:-1], y[1:], window)


def mackey_glass_task(length: int, window: int, seed: int,
                      **mg_kwargs) -> tuple[np.ndarray, np.ndarray]:
    """``length`` windows of Mackey–Glass samples (length, window) and targets (length,).

    Row i holds samples x[i] … x[i+window-1]; its target is x[i+window], the next
    sample. ``mg_kwargs`` go to mackey_glass. Raises ValueError as it and windows do.
    """
    if length < 1 or window < 1:
        raise ValueError(f"mackey_glass_task: length {length} and window {window} must be >= 1")
    x = mackey_glass(length + window, seed, **mg_kwargs)
    return windows(x[:-1], x[1:], window)


def delayed_recall_task(length: int, window: int, seed: int,
                        delay: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``length`` windows of i.i.d. inputs x ~ U[-1, 1] (length, window), and targets:
    the input ``delay`` steps before the window's last, x(t - delay).

    With ``window`` ≤ ``delay`` the target lies outside each sample: only a reservoir
    whose state runs on from sample to sample (``data.continuous``) can recall it.
    Raises ValueError for a length, window or delay below 1.
    """
    if length < 1 or window < 1 or delay < 1:
        raise ValueError(f"delayed_recall: length {length}, window {window} and delay "
                         f"{delay} must be >= 1")
    x = np.random.default_rng([seed, 0x4ECA]).uniform(-1.0, 1.0, length + window + delay)
    rows = np.arange(length)[:, None] + delay + np.arange(window)[None, :]
    return x[rows], x[rows[:, -1] - delay]
