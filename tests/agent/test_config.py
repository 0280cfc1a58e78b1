"""Configuration loading: TOML plus --set overrides, checked before any work."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgt._config import ConfigError, config_to_toml, load_config
from pgt._schema import Config
from pgt.cli import main



def test_defaults_without_file() -> None:
    assert load_config(None, []) == Config()


def test_file_and_overrides(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('seed = 5\n[estimator]\nname = "spsa"\nk = 2\n[optimizer]\nlr = 1\n')
    cfg = load_config(path, ["estimator.k=8", "seed=3", "estimator.form=one-sided",
                             "reservoir.url=sim://ring?nodes=24&gain=0.9"])
    assert (cfg.seed, cfg.estimator.name, cfg.estimator.k) == (3, "spsa", 8)
    assert cfg.estimator.form == "one-sided"
    assert cfg.reservoir.url == "sim://ring?nodes=24&gain=0.9"
    assert cfg.optimizer.lr == 1.0 and isinstance(cfg.optimizer.lr, float)


def test_override_for_a_string_field_keeps_the_text() -> None:
    assert load_config(None, ["run_name=2024"]).run_name == "2024"


def test_settings_are_typed_values() -> None:
    cfg = load_config(None, [], settings={"device": "gpu", "reservoir.url": "emu://"})
    assert (cfg.device, cfg.reservoir.url) == ("gpu", "emu://")


@pytest.mark.parametrize(("toml", "overrides", "message"), [
    ("", ["estimator.kk=8"],
     "config: unknown key 'estimator.kk' in --set (did you mean 'estimator.k'?)"),
    ("[estimater]\nk = 3\n", [],
     "config: unknown key 'estimater' in CFG (did you mean 'estimator'?)"),
    ("[train]\nstepz = 3\n", [],
     "config: unknown key 'train.stepz' in CFG (did you mean 'train.steps'?)"),
    ("", ["nothing.here=1"], "config: unknown key 'nothing' in --set"),
    ("[train]\nsteps = \"many\"\n", [],
     "config: 'train.steps' in CFG must be an integer, got a string 'many'"),
    ("[train]\nsteps = true\n", [],
     "config: 'train.steps' in CFG must be an integer, got a boolean True"),
    ("", ["train.steps=1.5"],
     "config: 'train.steps' in --set must be an integer, got a number 1.5"),
    ("device = 3\n", [], "config: 'device' in CFG must be a string, got an integer 3"),
    ("estimator = 3\n", [], "config: 'estimator' in CFG is a table, not an integer 3"),
    ("", ["estimator.name=adam"], "config: 'estimator.name' must be one of interface,"
     " pgt, spsa, readout, ridge, twin, backprop, got 'adam'"),
    ("", ["device=tpu"], "config: 'device' must be one of cpu, gpu, got 'tpu'"),
    ("", ["estimator.k=0"], "config: 'estimator.k' must be positive, got 0"),
    ("", ["estimator.sigma=-0.1"], "config: 'estimator.sigma' must be positive, got -0.1"),
    ("", ["data.test_fraction=1"],
     "config: 'data.test_fraction' must be between 0 and 1, got 1.0"),
    ("", ["seed"], "config: --set expects key=value, got 'seed'"),
    ("[train\n", [], "config: CFG is not valid TOML: "),
])
def test_invalid_config_is_one_line_naming_the_key(tmp_path, toml, overrides,
                                                   message) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(message.replace("CFG", str(path)))


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="no config file at"):
        load_config(tmp_path / "absent.toml", [])


@pytest.mark.parametrize("args", [
    ["--set", "estimator.kk=8"],
    ["--set", "train.steps=abc"],
    ["--set", "optimizer.name=rmsprop"],
    ["CFG"],
])
def test_cli_rejects_bad_config_before_any_work(tmp_path, monkeypatch, capsys,
                                                args) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text("[model]\nname = \"conv\"\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = ["train", *[str(tmp_path / "bad.toml") if a == "CFG" else a for a in args]]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("pgt: config: ") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before


_names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")),
                 max_size=12).filter(lambda s: "/" not in s and "\\" not in s
                                     and s not in (".", ".."))


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**62), k=st.integers(1, 1000), lr=st.floats(1e-9, 10.0),
       name=_names, url=st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=30),
       estimator=st.sampled_from(["interface", "pgt", "spsa", "readout", "backprop"]))
def test_toml_round_trip(tmp_path_factory, seed, k, lr, name, url, estimator) -> None:
    cfg = Config(seed=seed, run_name=name)
    cfg.estimator = dataclasses.replace(cfg.estimator, k=k, name=estimator)
    cfg.optimizer.lr = lr
    cfg.reservoir.url = url
    path = tmp_path_factory.mktemp("rt") / "config.toml"
    path.write_text(config_to_toml(cfg), encoding="utf-8")
    assert load_config(path, []) == cfg
