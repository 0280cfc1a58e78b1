"""Resume: a run stopped or killed anywhere continues to the same bits."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import trio
from structlog.testing import capture_logs

from pgt._checkpoint import latest_checkpoint, load_checkpoint
from pgt._config import config_to_toml, load_config
from pgt._runloop import run_training

SMALL = ["train.steps=12", "train.eval_every=5", "train.checkpoint_every=4",
         "reservoir.url='fake://?delay=1'"]


def assert_same_final_state(a: Path, b: Path, step: int) -> None:
    """The two runs' final checkpoints hold equal arrays and identical bytes."""
    ckpt_a, ckpt_b = latest_checkpoint(a), latest_checkpoint(b)
    assert ckpt_a.name == ckpt_b.name == f"step-{step}"
    arrays_a, meta_a = load_checkpoint(ckpt_a)
    arrays_b, meta_b = load_checkpoint(ckpt_b)
    assert arrays_a.keys() == arrays_b.keys()
    for name in arrays_a:
        assert arrays_a[name].dtype == arrays_b[name].dtype, name
        assert np.array_equal(arrays_a[name], arrays_b[name]), name
        assert arrays_a[name].tobytes() == arrays_b[name].tobytes(), name
    assert (ckpt_a / "arrays.npz").read_bytes() == (ckpt_b / "arrays.npz").read_bytes()
    assert meta_a["sha256"] == meta_b["sha256"]


async def test_stopped_then_resumed_equals_uninterrupted(tmp_path, fakes,
                                                         autojump_clock) -> None:
    cfg = load_config(None, SMALL)
    await run_training(cfg, tmp_path / "whole", resume=False, **fakes)

    async def interrupt() -> None:
        await trio.sleep(6.5)  # in the middle of step 7 (1 s per ring call)
        os.kill(os.getpid(), signal.SIGINT)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(interrupt)
        first = await run_training(cfg, tmp_path / "split", resume=False, **fakes)
    assert first["reason"] == "signal" and 0 < first["step"] < 12
    with capture_logs() as logs:
        second = await run_training(cfg, tmp_path / "split", resume=True, **fakes)
    assert second["reason"] == "finished" and second["step"] == 12
    assert logs[0] == {"event": "run_resumed", "log_level": "info", "step": first["step"],
                       "checkpoint": tmp_path / "split" / "checkpoints" / f"step-{first['step']}"}
    assert logs[1]["event"] == "run_start" and logs[1]["resumed"] is True
    assert_same_final_state(tmp_path / "whole", tmp_path / "split", 12)


async def test_resume_before_the_first_checkpoint_starts_over(tmp_path, fakes,
                                                             autojump_clock) -> None:
    cfg = load_config(None, SMALL)
    await run_training(cfg, tmp_path / "whole", resume=False, **fakes)
    (tmp_path / "early").mkdir()
    (tmp_path / "early" / "config.toml").write_text(config_to_toml(cfg))
    result = await run_training(cfg, tmp_path / "early", resume=True, **fakes)
    assert result["step"] == 12
    assert_same_final_state(tmp_path / "whole", tmp_path / "early", 12)


async def test_resuming_a_finished_run_changes_nothing(tmp_path, fakes,
                                                      autojump_clock) -> None:
    cfg = load_config(None, SMALL)
    first = await run_training(cfg, tmp_path / "run", resume=False, **fakes)
    ckpt = latest_checkpoint(tmp_path / "run")
    before = (ckpt / "meta.json").read_bytes()
    with capture_logs() as logs:
        again = await run_training(cfg, tmp_path / "run", resume=True, **fakes)
    assert [e["event"] for e in logs] == ["run_resumed", "run_start", "run_stop"]
    assert again["test_accuracy"] == first["test_accuracy"]
    assert (ckpt / "meta.json").read_bytes() == before


async def test_checkpoints_by_elapsed_time(tmp_path, fakes, autojump_clock) -> None:
    cfg = load_config(None, ["train.steps=10", "train.checkpoint_every=0",
                             "train.checkpoint_seconds=25", "train.keep_checkpoints=10",
                             "reservoir.url='fake://?delay=10'"])
    with capture_logs() as logs:
        await run_training(cfg, tmp_path / "run", resume=False, **fakes)
    saved = [e["step"] for e in logs if e["event"] == "checkpoint_saved"]
    assert saved == [3, 6, 9, 10]


def _pgt(*args: str) -> list[str]:
    return [sys.executable, "-m", "pgt", *args]


def _start_and_wait_for_checkpoint(args: list[str], run_dir: Path) -> tuple[subprocess.Popen, float]:
    """Start a run; return it once its first checkpoint exists, with that moment."""
    proc = subprocess.Popen(_pgt(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while latest_checkpoint(run_dir) is None:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.002)
    return proc, time.monotonic()


def _wait_for_checkpoint(run_dir: Path, name: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / name).is_dir():
        assert proc.poll() is None or (run_dir / "checkpoints" / name).is_dir(), proc.stderr.read()
        assert time.monotonic() < deadline, f"{name} did not appear"
        time.sleep(0.002)


def test_killed_at_a_random_moment_then_resumed_is_bit_exact(tmp_path) -> None:
    pytest.importorskip("pgt._trainer")
    settings = ["--set", "train.steps=40", "--set", "train.checkpoint_every=1",
                "--set", "train.eval_every=10", "--run-dir", str(tmp_path), "--quiet"]
    # the uninterrupted run also measures how long training lasts from the first
    # checkpoint to the last, so the kill can land at a random moment inside it
    whole, started = _start_and_wait_for_checkpoint(["train", "--name", "whole", *settings],
                                                    tmp_path / "whole")
    _wait_for_checkpoint(tmp_path / "whole", "step-40", whole)
    span = time.monotonic() - started
    assert whole.wait(timeout=120) == 0, whole.stderr.read()
    whole.stderr.close()

    seed = int(os.environ.get("PGT_KILL_SEED", random.randrange(2**32)))
    delay = span * random.Random(seed).uniform(0.05, 0.8)
    for attempt in range(4):  # a loaded machine can run faster or slower than measured
        name = f"killed-{attempt}"
        print(f"kill seed {seed} (PGT_KILL_SEED={seed} repeats it): SIGKILL {delay:.3f} s "
              f"after the first checkpoint, of a {span:.3f} s span")
        proc, _ = _start_and_wait_for_checkpoint(["train", "--name", name, *settings],
                                                 tmp_path / name)
        with proc:
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
        killed_at = latest_checkpoint(tmp_path / name).name
        print(f"killed with {killed_at} as the latest checkpoint (rc {proc.returncode})")
        if proc.returncode == -signal.SIGKILL and killed_at != "step-40":
            break
        delay /= 2
    else:
        pytest.fail("four kills in a row landed after the run had finished")

    resumed = subprocess.run(_pgt("resume", str(tmp_path / name), "--quiet"),
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith("test accuracy ")
    assert_same_final_state(tmp_path / "whole", tmp_path / name, 40)


def test_killed_with_only_its_best_checkpoint_saved_starts_over_to_the_same_bits(tmp_path):
    """A run killed after it saved its best-validation checkpoint but before its first
    step checkpoint has nothing to resume from (the best is never resumed from): the
    resume starts it over and ends where an uninterrupted run ends."""
    pytest.importorskip("pgt._trainer")
    from pgt._logging import EVENTS_FILE, read_events

    common = ["--set", "train.eval_every=5", "--run-dir", str(tmp_path), "--quiet"]
    name = "killed"
    run = tmp_path / name
    proc = subprocess.Popen(_pgt("train", "--name", name, "--set", "train.steps=100000",
                                 "--set", "train.checkpoint_every=100000", *common),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with proc:
        deadline = time.monotonic() + 120
        while not ((run / EVENTS_FILE).is_file() and any(
                e.get("event") == "checkpoint_saved" and e.get("best")
                for e in read_events(run / EVENTS_FILE))):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no best checkpoint appeared"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert (run / "checkpoints" / "best").is_dir() and latest_checkpoint(run) is None

    resumed = subprocess.run(_pgt("resume", str(run), "--set", "train.steps=30", "--quiet"),
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    whole = subprocess.run(_pgt("train", "--name", "whole", "--set", "train.steps=30",
                                "--set", "train.checkpoint_every=100000", *common),
                           capture_output=True, text=True, timeout=120)
    assert whole.returncode == 0, whole.stderr
    assert resumed.stdout.replace(str(run), "RUN") == whole.stdout.replace(
        str(tmp_path / "whole"), "RUN")
    assert_same_final_state(tmp_path / "whole", run, 30)
