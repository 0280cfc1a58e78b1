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
