"""The ridge baseline and regression with every estimator, on the simulated ring."""

from __future__ import annotations

import numpy as np
import pytest

from pgt._config import load_config
from pgt._data import dataset_from_arrays
from pgt._metrics import score
from pgt._ridge import LAMBDAS, fit_ridge
from pgt._trainer import Trainer
from pgt.backends import open_reservoir


def test_ridge_picks_lambda_on_validation_and_matches_the_normal_equations():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(200, 6))
    t = (f @ rng.normal(size=(6, 1))) + 0.1 * rng.normal(size=(200, 1))
    w, b, info = fit_ridge(f[:150], t[:150], f[150:], t[150:], "regression")
    lam = info["ridge_lambda"]
    assert info["ridge_val_nmse"][LAMBDAS.index(lam)] == min(info["ridge_val_nmse"])
    # The same readout from the textbook formula on standardised, centred data.
    mu, sd = f[:150].mean(0), f[:150].std(0)
    x = (f[:150] - mu) / sd
    direct = np.linalg.solve(x.T @ x + lam * np.eye(6), x.T @ (t[:150] - t[:150].mean(0)))
    np.testing.assert_allclose(w, direct / sd[:, None], rtol=1e-8)
    pred = f[150:] @ w + b
    assert score("regression", pred, t[150:], np.zeros(50))["nmse"] < 0.05


async def _trainer(overrides, data=None, url="sim://ring?nodes=8"):
    cfg = load_config(None, overrides)
    ctx = open_reservoir(url, seed=cfg.seed)
    ring = await ctx.__aenter__()
    return Trainer(cfg, ring, data=data), ctx


async def test_ridge_on_the_digits_is_one_pass_and_uses_no_test_sample():
    trainer, ctx = await _trainer(["estimator.name=ridge"])
    try:
        metrics = await trainer.train_step()
        assert trainer.done and trainer.step == 1
        n = len(trainer.data.y_train) + len(trainer.data.y_val)
        assert metrics["ring_evals"] == n                      # one pass, train + val
        assert metrics["ridge_lambda"] in LAMBDAS
        result = await trainer.evaluate()
        assert result["test_accuracy"] > 0.85
        # Only the readout moved; everything before the ring is the seeded start.
        start = trainer.model.init_params(0)
        base = trainer.model.base_dim
        np.testing.assert_array_equal(trainer.params[:base], start[:base])
    finally:
        await ctx.__aexit__(None, None, None)


def _regression_data():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(240, 5))
    y = np.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2]
    return x, y


@pytest.mark.parametrize("estimator", ["interface", "pgt", "spsa", "readout", "backprop", "ridge"])
@pytest.mark.parametrize("model", ["dense", "transformer"])
async def test_every_estimator_fits_regression_on_both_models(estimator, model):
    x, y = _regression_data()
    extra = ["model.d_model=8", "model.mlp_width=8"] if model == "transformer" else []
    cfg_over = [f"estimator.name={estimator}", f"model.name={model}", "data.task=regression",
                "train.steps=150" if estimator == "readout" else "train.steps=60", *extra]
    if estimator in ("pgt", "spsa"):
        cfg_over += ["estimator.k=8", "estimator.sigma=0.01"]
    cfg = load_config(None, cfg_over)
    x_seq = x[:, :, None] if model == "transformer" else x   # 5 tokens of 1 value
    data = dataset_from_arrays(x_seq.repeat(16 // 5 + 1, axis=1)[:, :16] if model == "transformer"
                               else x_seq, y, cfg=cfg.data)
    trainer, ctx = await _trainer(cfg_over, data=data)
    try:
        first = (await trainer.evaluate())["val_nmse"]
        while not trainer.done:
            metrics = await trainer.train_step()
            assert np.isfinite(metrics["loss"])
        last = await trainer.evaluate()
        assert {"val_nmse", "test_nmse", "test_nrmse", "test_r2", "test_mse"} <= set(last)
        assert last["test_r2"] == pytest.approx(1 - last["test_nmse"])
        if estimator not in ("pgt", "spsa"):   # those two need far more steps (next test)
            assert last["val_nmse"] < first       # it learned something
    finally:
        await ctx.__aexit__(None, None, None)


@pytest.mark.parametrize(("estimator", "k", "steps", "floor"),
                         [("interface", 4, 1, 0.95), ("pgt", 64, 8, 0.3), ("spsa", 1, 200, 0.3)])
async def test_perturbative_regression_gradients_point_along_the_exact_one(estimator, k, steps,
                                                                           floor):
    x, y = _regression_data()
    over = ["data.task=regression", "estimator.sigma=0.001", "estimator.spsa_gamma=0"]
    data = dataset_from_arrays(x, y, cfg=load_config(None, over).data)
    exact_t, ctx = await _trainer([*over, "estimator.name=backprop"], data=data)
    trainer, ctx2 = await _trainer([*over, f"estimator.name={estimator}", f"estimator.k={k}"],
                                   data=data)
    try:
        xb, yb = data.x_train[:32], data.y_train[:32]
        exact = (await exact_t.estimate(xb, yb, 0))[0]
        mean = np.mean([(await trainer.estimate(xb, yb, s))[0] for s in range(steps)], axis=0)
        cosine = mean @ exact / np.linalg.norm(mean) / np.linalg.norm(exact)
        assert cosine > floor
    finally:
        await ctx.__aexit__(None, None, None)
        await ctx2.__aexit__(None, None, None)
