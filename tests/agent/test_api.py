"""The Python API: the README's example as it is, trio programs, resume with an
object, and a run's reservoir object that the CLI cannot reopen."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest
import trio

import pgt
from pgt.backends import ReservoirInfo
from pgt.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- api-example[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert match, "the README's Python-API example is missing"
    return match.group(1)


def test_the_readme_example_trains_in_a_worker_thread_and_predicts(tmp_path, monkeypatch,
                                                                    capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_readme_example(), "README.md", "exec"), namespace)
    result = namespace["result"]
    out = capsys.readouterr().out
    assert out.startswith("test accuracy ")            # the example's own prints, nothing else
    assert result.run_dir == Path("runs/wine-api") and result.metrics["step"] == 300
    assert result.metrics["test_accuracy"] > 0.8       # wine's three classes, 45 test samples
    predicted = result.predict(namespace["x"])
    assert predicted.dtype.kind == "i" and predicted.shape == (178,)
    assert (predicted == namespace["y"]).mean() > 0.8
    assert result.config.reservoir.url == "object://my-ring"
    assert (tmp_path / "runs/wine-api/data.npz").is_file()


class Ring:
    info = ReservoirInfo(name="toy", n_inputs=16, n_features=32, max_batch=4096)

    def __init__(self):
        self.mix = np.random.default_rng(1).normal(size=(16, 32)) / 4
        self.calls = 0

    async def forward(self, u):
        self.calls += 1
        await trio.sleep(0)
        return np.tanh(u @ self.mix) ** 2


def _blobs(n=120):
    rng = np.random.default_rng(0)
    y = np.array(["a", "b", "c"])[np.arange(n) % 3]
    x = rng.normal(size=(n, 6)) + 2.0 * (np.arange(n) % 3)[:, None]
    return x, y


CONFIG = {"train.steps": 40, "train.eval_every": 20, "train.checkpoint_every": 20}


async def test_train_async_runs_inside_a_trio_program_and_the_loop_keeps_going(tmp_path):
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0)

    x, y = _blobs()
    ring = Ring()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        result = await pgt.train_async(x, y, config=CONFIG, reservoir=ring,
                                       run_dir=tmp_path / "run")
        predicted = await result.predict_async(x)
        nursery.cancel_scope.cancel()
    assert ticks > 10 and ring.calls > 40
    assert set(predicted) <= {"a", "b", "c"} and (predicted == y).mean() > 0.6
    with pytest.raises(RuntimeError, match="running trio program"):
        pgt.train(x, y, config=CONFIG, reservoir=ring, run_dir=tmp_path / "other")


def test_resume_from_python_with_the_object_is_bit_exact(tmp_path):
    x, y = _blobs()
    full = pgt.train(x, y, config=CONFIG, reservoir=Ring(), run_dir=tmp_path / "full")
    cut = pgt.train(x, y, config=CONFIG, reservoir=Ring(), run_dir=tmp_path / "cut")
    (cut.run_dir / "checkpoints" / "step-40").rename(cut.run_dir / "checkpoints" / "gone")
    resumed = pgt.resume(cut.run_dir, reservoir=Ring())
    assert resumed.metrics["step"] == 40
    a = np.load(full.run_dir / "checkpoints/step-40/arrays.npz")["params"]
    b = np.load(resumed.run_dir / "checkpoints/step-40/arrays.npz")["params"]
    np.testing.assert_array_equal(a, b)
    assert resumed.metrics["test_accuracy"] == full.metrics["test_accuracy"]


def test_the_cli_says_how_to_reopen_a_run_on_an_object(tmp_path, capsys):
    x, y = _blobs()
    result = pgt.train(x, y, config=CONFIG, reservoir=Ring(), run_dir=tmp_path / "run")
    capsys.readouterr()
    assert main(["eval", str(result.run_dir)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("pgt: this run's reservoir (object://toy) was an object") and "\n" not in err
    assert pgt.evaluate(result.run_dir, reservoir=Ring())["test_accuracy"] > 0.6


def test_an_api_run_on_a_url_resumes_and_evals_from_the_cli(tmp_path, capsys):
    x, y = _blobs()
    cfg = {**CONFIG, "reservoir": {"url": "sim://ring?nodes=4"}, "run_dir": str(tmp_path)}
    result = pgt.train(x, y, config=cfg)
    assert result.run_dir.parent == tmp_path
    assert main(["eval", str(result.run_dir)]) == 0
    assert "class a:" in capsys.readouterr().out


def test_regression_from_python_predicts_in_the_data_units(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(150, 4))
    y = 50.0 + 10.0 * x[:, 0]
    result = pgt.train(x, y, reservoir=Ring(), run_dir=tmp_path / "r",
                       config={"data.task": "regression", "train.steps": 200,
                               "train.eval_every": 50})
    assert result.metrics["test_nmse"] < 0.5
    predicted = result.predict(x)
    assert predicted.shape == (150,) and abs(predicted.mean() - 50.0) < 3.0


def test_bad_api_input_is_a_one_line_error(tmp_path):
    x, y = _blobs()
    with pytest.raises(pgt.ConfigError, match="unknown key 'train.stepz'"):
        pgt.train(x, y, config={"train.stepz": 3}, reservoir=Ring(), run_dir=tmp_path / "a")
    with pytest.raises(pgt.ConfigError, match="not a reservoir"):
        pgt.train(x, y, reservoir=object(), run_dir=tmp_path / "b")
    with pytest.raises(pgt.DataError, match="'x' has 120 samples but 'y' has 119"):
        pgt.train(x, y[:-1], reservoir=Ring(), run_dir=tmp_path / "c")
    assert not any(tmp_path.iterdir())


def test_train_from_a_thread_installs_no_signal_handlers(tmp_path):
    import signal

    before = signal.getsignal(signal.SIGINT)
    x, y = _blobs()
    box = {}
    thread = threading.Thread(target=lambda: box.update(r=pgt.train(
        x, y, config=CONFIG, reservoir=Ring(), run_dir=tmp_path / "t")))
    thread.start()
    thread.join()
    assert box["r"].metrics["reason"] == "finished"
    assert signal.getsignal(signal.SIGINT) is before


def test_two_runs_in_two_threads_keep_their_own_events(tmp_path):
    x, y = _blobs()
    box = {}

    def work(name):
        box[name] = pgt.train(x, y, config={**CONFIG, "train.steps": 60}, reservoir=Ring(),
                              run_dir=tmp_path / name)

    threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    from pgt._logging import read_events

    for name in ("a", "b"):
        events = list(read_events(tmp_path / name / "events.jsonl"))
        assert {e["run_id"] for e in events} == {name}
        assert [e["step"] for e in events if e["event"] == "step"] == list(range(1, 61))
        assert box[name].metrics["step"] == 60
