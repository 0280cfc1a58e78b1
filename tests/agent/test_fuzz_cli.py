"""Bad input of every kind — config values, reservoir URLs, command-line arguments —
is one ``pgt:`` line and a non-zero exit, never a traceback, and starts no run."""

from __future__ import annotations

import pytest

from pgt.cli import main

# Each: a config key and values it can never take.
BAD_VALUES = {
    "seed": ["-1", "1.5", "true", '"x"', "99999999999999999999"],
    "data.split_seed": ["-3"],
    "device": ['"tpu"', "1"],
    "run_name": ['"a/b"', '".."', '"a\\u0000b"', '"tab\\there"', '"."'],
    "data.name": ['"mnist"', "3"],
    "data.task": ['"ranking"'],
    "data.label": ['""'],
    "data.test_fraction": ["0", "1", "1.5", "-0.1", "nan", "inf", '"a"'],
    "data.val_fraction": ["1", "-0.5", "nan"],
    "data.batch_size": ["0", "-4", "2.5", "true"],
    "data.seq_len": ["0"], "data.parity_bits": ["0"], "data.delay": ["-1"],
    "data.window": ["0", "-2"], "data.length": ["0"],
    "model.name": ['"cnn"'], "model.pool": ['"max"'],
    "model.init_scale": ["nan", "-1", "inf"],
    "model.feature_scale": ["0", "-0.1", "nan"],
    "model.d_model": ["0"], "model.heads": ["0", "3"], "model.mlp_width": ["-1"],
    "reservoir.url": ["3", "[1]"], "reservoir.urls": ["3", '["a", 2]'],
    "reservoir.trial_timeout_s": ["-1", "nan"], "reservoir.suspend_limit_s": ["-5", "inf"],
    "estimator.name": ['"adam"', '"twin2"'], "estimator.k": ["0", "-1", "1.5"],
    "estimator.sigma": ["0", "-0.01", "nan", "inf"],
    "estimator.form": ['"two-sided"'], "estimator.distribution": ['"uniform"'],
    "estimator.spsa_a": ["-1"], "estimator.spsa_alpha": ["nan"], "estimator.spsa_gamma": ["-0.1"],
    "optimizer.name": ['"rmsprop"'], "optimizer.lr": ["0", "-1", "inf", "nan", "1e400"],
    "optimizer.momentum": ["1", "-0.1", "1.5"], "optimizer.beta1": ["1.5", "1", "-0.1"],
    "optimizer.beta2": ["1", "2"], "optimizer.eps": ["-1", "0", "nan"],
    "optimizer.weight_decay": ["-0.1", "inf"], "optimizer.schedule": ['"linear"'],
    "train.steps": ["0", "-10", "1.5", "false"], "train.eval_every": ["0"],
    "train.checkpoint_every": ["-1"], "train.checkpoint_seconds": ["0", "nan"],
    "train.keep_checkpoints": ["0"], "train.on_divergence": ['"ignore"'],
    "train.log_every": ["0"],
    "nonsense": ["1"], "train.stepz": ["3"], "data.nam": ['"digits"'], "optimiser.lr": ["0.1"],
}

BAD_URLS = [
    "sim://ring?inputs=0", "sim://ring?max_batch=0", "sim://ring?nodes=0", "sim://ring?gain=abc",
    "sim://ring?gain=nan", "sim://ring?noise=-1", "sim://ring?wobble=1", "sim://nowhere",
    "sim://ring?device=tpu", "sim://ring?tap=0.7", "sim://ring?inputs=-3", "sim://ring?fused=x",
    "socket://[::1", "socket://127.0.0.1:notaport", "socket://127.0.0.1:99999",
    "emu://?latency_ms=-5", "emu://?latency_ms=abc", "emu://?faults=bogus=1",
    "emu://?faults=corrupt=2", "emu://?inputs=0", "emu://?max_batch=0", "emu://?bits=3",
    "emu://?retries=-1", "emu://?timeout_ms=0", "emu://?baud=-1", "emu://?sample_steps=9-2",
    "emu://?sample_steps=a", "emu://?wobble=1", "emu://?nodes=0", "emu://?log_trials=maybe",
    "foo://x", "", "://", "ring", "http://example.com", "serial://", "my_ring://x",
]

BAD_ARGS = [
    ["emulate", "--inputs", "0"], ["emulate", "--tcp", "99999"], ["emulate", "--tcp", "-1"],
    ["emulate", "--latency-ms", "-5"], ["emulate", "--nodes", "0"], ["emulate", "--max-batch", "0"],
    ["emulate", "--noise", "-0.1"], ["emulate", "--baud", "-1"], ["emulate", "--faults", "bogus"],
    ["emulate", "--faults", "corrupt=5"], ["emulate", "--latency-ms", "nan"],
    ["train", "--device", "tpu"], ["train", "--set", "novalue"], ["train", "--set", "=3"],
    ["train", "--frobnicate"], ["train", "no-such-config.toml"], ["frobnicate"], [],
    ["resume"], ["resume", "/no/such/run"], ["eval", "/no/such/run"], ["logs", "/no/such/run"],
    ["plot", "/no/such/run"], ["resume", "/no/such/run", "--from", "step-3"],
    ["train", "--data", "/no/such.csv"], ["train", "--data", "x.parquet"],
    ["report", "--jobs", "0"], ["report", "--seeds"],
    ["train", "--set", "estimator.name=backprop", "--backend", "emu://"],
]

CASES = ([("train", "--set", f"{key}={value}") for key, values in BAD_VALUES.items()
          for value in values]
         + [("train", "--backend", url) for url in BAD_URLS]
         + [tuple(args) for args in BAD_ARGS])


def test_there_are_enough_cases():
    assert len(CASES) >= 150


@pytest.mark.parametrize("argv", CASES, ids=[" ".join(c)[:60] for c in CASES])
def test_bad_input_is_one_pgt_line_and_a_non_zero_exit(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra = ["--run-dir", str(tmp_path / "runs"), "--quiet",
             "--set", "train.steps=2"] if argv and argv[0] == "train" else []
    code = main([*argv[:1], *extra, *argv[1:]])   # the case's own --set comes last
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code != 0, (argv, out, err)
    assert len(lines) == 1 and lines[0].startswith("pgt: "), (argv, err)
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
