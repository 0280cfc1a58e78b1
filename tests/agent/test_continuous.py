"""Continuous time-series mode: the ring runs on from sample to sample, so a target
that lies before each sample's own inputs becomes learnable; runs resume bit-exactly."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from pgt.backends import open_reservoir
from pgt.cli import main
from tests.agent.test_resume import assert_same_final_state

RING = "sim://ring?inputs=4&preset=memory"
RECALL = ["--set", "data.name=delayed_recall", "--set", "data.window=1", "--set", "data.delay=1",
          "--set", "model.feature_scale=1", "--quiet"]


def _result(tmp_path, name, *extra):
    assert main(["train", *RECALL, "--backend", RING, *extra, "--run-dir", str(tmp_path),
                 "--name", name]) == 0
    from pgt._checkpoint import latest_checkpoint, load_checkpoint

    return load_checkpoint(latest_checkpoint(tmp_path / name))[1]["last_eval"]


def test_recall_across_sample_boundaries_needs_the_continuous_mode(tmp_path, capsys):
    # Each sample holds one input; its target is the input of the sample before.
    cut = _result(tmp_path, "cut", "--set", "estimator.name=ridge")
    run_on = _result(tmp_path, "on", "--set", "estimator.name=ridge", "--set", "data.continuous=true")
    assert cut["test_nmse"] > 0.95          # nothing to recall from a ring started at rest
    assert run_on["test_nmse"] < 0.05       # the ring's state carries it
    trained = _result(tmp_path, "interface", "--set", "data.continuous=true",
                      "--set", "train.steps=300", "--set", "train.eval_every=100")
    assert trained["val_nmse"] < 0.9        # learnable by the gradient-trained network too


def test_a_continuous_run_resumes_to_the_same_bits(tmp_path, capsys):
    args = [*RECALL, "--set", "data.continuous=true", "--set", "train.steps=40",
            "--set", "train.checkpoint_every=10", "--set", "train.eval_every=10",
            "--backend", RING + "&noise=0.01&walk=0.02&clock=sample", "--run-dir", str(tmp_path)]
    assert main(["train", *args, "--name", "whole"]) == 0
    assert main(["train", *args, "--name", "cut"]) == 0
    for step in (40, 30):
        shutil.rmtree(tmp_path / "cut" / "checkpoints" / f"step-{step}")
    assert main(["resume", str(tmp_path / "cut"), "--quiet"]) == 0
    assert_same_final_state(tmp_path / "whole", tmp_path / "cut", 40)
    from pgt._logging import read_events

    steps = [e for e in read_events(tmp_path / "whole" / "events.jsonl") if e["event"] == "step"]
    # every ring evaluation counts: the washout is driven through the ring too
    assert steps[0]["ring_evals"] == 9 * (32 + 32)


async def test_a_sequence_is_the_rows_run_one_after_another():
    async with open_reservoir("sim://ring?inputs=4&nodes=6", seed=0) as ring:
        u = np.tanh(np.random.default_rng(0).normal(size=(2, 5, 4)))
        seq = await ring.forward_sequence(u)
        async with open_reservoir("sim://ring?inputs=20&nodes=6", seed=0) as long:
            whole = await long.forward(u.reshape(2, 20))
    np.testing.assert_allclose(seq.reshape(2, -1), whole)


@pytest.mark.parametrize(("extra", "message"), [
    (["--set", "data.name=digits", "--backend", RING], "needs a time series"),
    (["--set", "estimator.name=backprop", "--backend", RING], "does not support estimator 'backprop'"),
    (["--backend", "emu://?inputs=4"], "needs a reservoir that runs sequences"),
])
def test_the_continuous_mode_refuses_what_it_cannot_run(tmp_path, capsys, extra, message):
    code = main(["train", *RECALL, "--set", "data.continuous=true", *extra,
                 "--run-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err
