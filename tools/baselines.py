"""The strongest simple baselines, on exactly the split a run uses, nothing through
the ring: logistic regression on the raw features (classification) and ridge
regression on them (regression), each with its regularisation chosen on the
validation part. Used by tools/bench_data.py and tools/bench_estimators.py.
"""

from __future__ import annotations

import warnings

import numpy as np

from pgt._metrics import score

C_GRID = tuple(10.0 ** e for e in range(-3, 5))   # inverse regularisation strengths


def logistic_regression(data) -> dict:
    """Test accuracy of scikit-learn's LogisticRegression, C chosen on validation."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    best = None
    for c in C_GRID:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression(C=c, max_iter=5000).fit(data.x_train, data.y_train)
        val = float((model.predict(data.x_val) == data.y_val).mean())
        if best is None or val > best[0]:
            best = (val, c, model)
    val, c, model = best
    return {"val_accuracy": val, "test_accuracy": float((model.predict(data.x_test) == data.y_test).mean()),
            "C": c}


def linear_ridge(data) -> dict:
    """Test NMSE of a ridge regression on the raw features, λ chosen on validation."""
    from pgt._ridge import fit_ridge

    w, b, info = fit_ridge(data.x_train, data.y_train, data.x_val, data.y_val, "regression")
    pred = data.x_test @ w + b
    test = score("regression", pred, data.y_test, np.zeros(len(pred)))
    return {"test_nmse": test["nmse"], "test_nrmse": test["nrmse"], "lambda": info["ridge_lambda"]}


def echo_state_network(data, units: int = 400, seed: int = 0) -> dict:
    """Test NMSE of a software echo-state network (Jaeger 2001) on the same windows.

    Each sample's window drives a fresh tanh reservoir of ``units`` from rest, one value
    a step, as the ring is driven; the last state (and a bias) feeds a ridge readout.
    The spectral radius and input scaling are chosen on the validation part, from a
    small grid, with λ; the test part chooses nothing.
    """
    from pgt._ridge import fit_ridge

    rng = np.random.default_rng([seed, 0xE5])
    w = rng.standard_normal((units, units)) / np.sqrt(units)
    w /= np.max(np.abs(np.linalg.eigvals(w)))          # spectral radius 1, scaled below
    w_in = rng.uniform(-1.0, 1.0, units)

    def states(x, radius, scale):
        h = np.zeros((len(x), units))
        for t in range(x.shape[1]):
            h = np.tanh(radius * h @ w.T + scale * x[:, t:t + 1] * w_in)
        return h

    best = None
    for radius in (0.5, 0.8, 0.95, 1.1):
        for scale in (0.1, 0.5, 1.0):
            tr, va = states(data.x_train, radius, scale), states(data.x_val, radius, scale)
            wr, b, info = fit_ridge(tr, data.y_train, va, data.y_val, "regression")
            val = score("regression", va @ wr + b, data.y_val, np.zeros(len(va)))["nmse"]
            if best is None or val < best[0]:
                best = (val, radius, scale, wr, b, info["ridge_lambda"])
    _, radius, scale, wr, b, lam = best
    pred = states(data.x_test, radius, scale) @ wr + b
    test = score("regression", pred, data.y_test, np.zeros(len(pred)))
    return {"test_nmse": test["nmse"], "test_nrmse": test["nrmse"], "spectral_radius": radius,
            "input_scaling": scale, "lambda": lam, "units": units}


def run_all(fn, jobs: list, workers: int) -> list:
    """``fn`` over ``jobs`` on ``workers`` processes (spawned; one BLAS thread each, as
    the workers fill the cores already), in order; in this process when ``workers`` is 1."""
    import multiprocessing
    import os

    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    if workers <= 1:
        return [fn(job) for job in jobs]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return pool.map(fn, jobs, chunksize=1)
