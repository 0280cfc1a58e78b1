"""The twin estimator: twins whose gradients are their own, fitted online from
measurements, probes that keep the estimate unbiased whatever the twin, a probe
budget that follows the twin's agreement, and a run that resumes to the same bits."""

from __future__ import annotations

import numpy as np
import pytest

from pgt._config import load_config
from pgt._estimators import Twin
from pgt._logging import read_events
from pgt._trainer import Trainer
from pgt._twin import make_twin
from pgt.backends import open_reservoir
from pgt.cli import main
from pgt.kernels import RingParams, ring_backward, ring_forward
from tests.agent.test_resume import assert_same_final_state


@pytest.mark.parametrize("kind", ["grey", "black"])
def test_a_twin_s_gradients_are_those_of_its_own_map(kind):
    rng = np.random.default_rng(0)
    u = np.tanh(rng.normal(size=(6, 5)))
    feats = ring_forward(RingParams(nodes=3), u).reshape(6, -1)
    twin = make_twin(kind, 5, 15, 0.01, 8)
    state = twin.init(u, feats)
    state["twin.theta"] = state["twin.theta"] + 0.3 * rng.normal(size=state["twin.theta"].shape)
    weights = rng.normal(size=(6, 15))
    grad = twin.vjp(state, u, weights)
    h = 1e-6
    for b, i in [(0, 0), (3, 2), (5, 4)]:
        e = np.zeros_like(u)
        e[b, i] = h
        numeric = ((twin.forward(state, u + e) - twin.forward(state, u - e)) * weights).sum() / (2 * h)
        assert grad[b, i] == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    # and fitting moves its parameters down its own loss
    before = ((twin.forward(state, u) - feats) ** 2).mean()
    for _ in range(30):
        state, _ = twin.fit(state, u, feats)
    assert ((twin.forward(state, u) - feats) ** 2).mean() < before


def test_the_grey_box_twin_learns_an_unknown_ring_from_its_measurements():
    ring = RingParams(gain=0.7, kappa=0.8, tap=0.15, nu=0.6, mask_seed=77)   # not the defaults
    rng = np.random.default_rng(1)

    def measure(n):
        u = np.tanh(rng.normal(size=(n, 16)))
        return u, ring_forward(ring, u).reshape(n, -1)

    twin = make_twin("grey", 16, 16 * 24, 0.01, 0)
    u, f = measure(64)
    state = twin.init(u, f)
    for _ in range(600):
        u, f = measure(64)
        state, _ = twin.fit(state, u, f)
    u, f = measure(256)
    nmse = ((twin.forward(state, u) - f) ** 2).mean() / f.var()
    g = rng.normal(size=f.shape)
    exact = ring_backward(ring, ring_forward(ring, u, keep_cache=True)[1], g.reshape(256, 16, 24))
    mine = twin.vjp(state, u, g)
    cosine = (exact * mine).sum() / np.linalg.norm(exact) / np.linalg.norm(mine)
    assert nmse < 0.2 and cosine > 0.9, (nmse, cosine)


async def _trainer(overrides):
    cfg = load_config(None, overrides)
    ctx = open_reservoir("sim://ring?nodes=8", seed=cfg.seed)
    return Trainer(cfg, await ctx.__aenter__()), ctx


async def test_probes_correct_a_wrong_twin_towards_the_exact_gradient():
    trainer, ctx = await _trainer(["estimator.name=twin", "estimator.twin_probes=64",
                                   "estimator.sigma=0.001"])
    exact_t, ctx2 = await _trainer(["estimator.name=backprop"])
    try:
        for _ in range(30):   # a readout that is not zero, so the ring's inputs matter
            await exact_t.train_step()
        trainer.params = exact_t.params.copy()
        x, y = trainer.data.x_train[:32], trainer.data.y_train[:32]
        exact = (await exact_t.estimate(x, y, 30))[0]
        est = trainer.estimator
        probes = est.ask(trainer.est_state, 0)
        ev = await trainer._evaluate(probes, x, y, est.sigma(0), 0)
        post = ev.post_grads()
        wrong = np.random.default_rng(2).normal(size=ev.u.shape) * 1e-3   # a useless twin
        correction, agreement = est._probe_correction(0, probes, ev, wrong)

        def cos(g_u):
            g = ev.pack(**post, **ev.pre_grads(g_u))
            pre = slice(0, trainer.model.layout.pre_dim)
            return g[pre] @ exact[pre] / np.linalg.norm(g[pre]) / np.linalg.norm(exact[pre])

        assert abs(agreement) < 0.3               # the probes see the twin is wrong
        assert cos(wrong) < 0.3 < 0.8 < cos(wrong + correction)
    finally:
        await ctx.__aexit__(None, None, None)
        await ctx2.__aexit__(None, None, None)


def test_the_probe_budget_follows_the_twin_s_agreement():
    est = Twin(load_config(None, ["estimator.name=twin"]).estimator, 0)
    state = est.init(10)
    assert len(est.ask(state, 0)) == 5               # the clean pass and 2 probe pairs
    state.update({"twin.next": np.asarray(8), "twin.period": np.asarray(8)})
    assert len(est.ask(state, 7)) == 1 and len(est.ask(state, 8)) == 5
    off = Twin(load_config(None, ["estimator.name=twin", "estimator.twin_probes=0"]).estimator, 0)
    assert len(off.ask(off.init(10), 0)) == 1       # plain physics-aware training


def test_a_twin_run_logs_its_fit_and_resumes_to_the_same_bits(tmp_path, capsys):
    args = ["--backend", "sim://ring?nodes=8&noise=0.03", "--set", "estimator.name=twin",
            "--set", "train.steps=60", "--set", "train.checkpoint_every=20",
            "--set", "train.eval_every=20", "--run-dir", str(tmp_path), "--quiet"]
    assert main(["train", *args, "--name", "whole"]) == 0
    assert main(["train", *args, "--name", "cut"]) == 0
    import shutil

    for step in (60, 40):
        shutil.rmtree(tmp_path / "cut" / "checkpoints" / f"step-{step}")
    assert main(["resume", str(tmp_path / "cut"), "--quiet"]) == 0
    assert_same_final_state(tmp_path / "whole", tmp_path / "cut", 60)
    events = list(read_events(tmp_path / "whole" / "events.jsonl"))
    fits = [e for e in events if e["event"] == "twin_fit"]
    assert len(fits) == 60
    assert {"twin_error", "twin_fit_loss", "twin_period", "twin_exact_cosine"} <= set(fits[-1])
    assert any("twin_probe_cosine" in e for e in fits)
    steps = [e for e in events if e["event"] == "step"]
    probe_steps = [e["step"] for e in fits if "twin_probe_cosine" in e]
    # every ring evaluation counts: one pass per sample, and 2K more on a probing step
    evals = np.diff([0] + [e["ring_evals"] for e in steps])
    assert all(n == 32 * (5 if s in probe_steps else 1) for s, n in zip(range(1, 61), evals))


async def test_the_twin_trains_through_an_emulated_microcontroller(tmp_path):
    from pgt._runloop import run_training

    cfg = load_config(None, ["estimator.name=twin", "estimator.twin_kind=black",
                             "train.steps=20", "train.eval_every=10",
                             "reservoir.url='emu://?nodes=8&noise=0.01'"])
    result = await run_training(cfg, tmp_path / "r", resume=False)
    fits = [e for e in read_events(tmp_path / "r" / "events.jsonl") if e["event"] == "twin_fit"]
    assert result["step"] == 20 and fits and "twin_exact_cosine" not in fits[-1]   # a black box
