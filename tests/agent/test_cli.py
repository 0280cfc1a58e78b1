"""The pgt command line: errors at the boundary, logs, progress, stop signals."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import trio
from structlog.testing import capture_logs

from pgt._checkpoint import latest_checkpoint, save_checkpoint
from pgt._config import config_to_toml, load_config
from pgt._progress import Progress
from pgt._runloop import RunInterrupted, run_training
from pgt.cli import main


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _one_error_line(capsys) -> str:
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("pgt: ")
    assert "Traceback" not in err
    return err.strip()


def _run_dir_with_checkpoint(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = load_config(None, ["reservoir.url='fake://'"])
    (run_dir / "config.toml").write_text(config_to_toml(cfg))
    state = {"params": np.arange(8.0), "momentum": np.zeros(8), "step": np.array(4),
             "ring_evals": np.array(8)}
    save_checkpoint(run_dir, 4, state, {"ring_evals": 8})
    return run_dir


@pytest.mark.parametrize("command", ["resume", "eval", "logs"])
def test_missing_run_directory(tmp_path, monkeypatch, capsys, command) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([command, "runs/x"]) == 1
    assert _one_error_line(capsys) == "pgt: no run directory at runs/x"
    assert list(tmp_path.iterdir()) == []


def test_not_a_run_directory(tmp_path, capsys) -> None:
    assert main(["resume", str(tmp_path)]) == 1
    assert _one_error_line(capsys) == f"pgt: no config.toml in {tmp_path}: not a run directory"


def test_eval_without_checkpoint(tmp_path, capsys) -> None:
    (tmp_path / "config.toml").write_text(config_to_toml(load_config(None, [])))
    assert main(["eval", str(tmp_path)]) == 1
    assert _one_error_line(capsys) == f"pgt: no checkpoint in {tmp_path / 'checkpoints'}"


def _flip_byte(ckpt: Path) -> None:
    data = bytearray((ckpt / "arrays.npz").read_bytes())
    data[-40] ^= 0xFF
    (ckpt / "arrays.npz").write_bytes(bytes(data))


def _set_version(ckpt: Path) -> None:
    meta = json.loads((ckpt / "meta.json").read_text())
    (ckpt / "meta.json").write_text(json.dumps({**meta, "format_version": 9}))


@pytest.mark.parametrize("command", ["resume", "eval"])
@pytest.mark.parametrize(("damage", "problem"), [
    (_flip_byte, "checksum mismatch in arrays.npz"),
    (lambda ckpt: (ckpt / "meta.json").unlink(), "missing meta.json"),
    (_set_version, "unsupported format version 9"),
    (lambda ckpt: (ckpt / "arrays.npz").write_bytes(b""), "checksum mismatch"),
])
def test_damaged_checkpoint_is_one_line_and_left_alone(tmp_path, capsys, command, damage,
                                                       problem) -> None:
    run_dir = _run_dir_with_checkpoint(tmp_path)
    ckpt = latest_checkpoint(run_dir)
    damage(ckpt)
    before = _snapshot(run_dir)
    assert main([command, str(run_dir)]) == 1
    assert _one_error_line(capsys).startswith(f"pgt: checkpoint {ckpt}: {problem}")
    assert _snapshot(run_dir) == before


async def _fake_run(run_dir: Path, fakes, *extra: str) -> None:
    cfg = load_config(None, ["train.steps=4", "train.eval_every=2",
                             "reservoir.url='fake://'", *extra])
    await run_training(cfg, run_dir, resume=False, **fakes)


async def test_logs_render_and_filter(tmp_path, fakes, capsys) -> None:
    await _fake_run(tmp_path / "run", fakes)
    capsys.readouterr()
    assert await trio.to_thread.run_sync(main, ["logs", str(tmp_path / "run")]) == 0
    lines = capsys.readouterr().out.splitlines()
    events = [line.split()[1] for line in lines]
    assert events == ["run_start", "step", "step", "eval", "step", "step", "eval",
                      "checkpoint_saved", "run_stop"]
    assert "reason=finished step=4" in lines[-1]
    assert await trio.to_thread.run_sync(
        main, ["logs", str(tmp_path / "run"), "--event", "eval"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["eval", "eval"]
    assert "step=2 test_accuracy=" in lines[0]


def test_logs_follow_a_finished_run(tmp_path, capsys) -> None:
    (tmp_path / "events.jsonl").write_text(
        '{"event": "step", "step": 1}\n{"event": "run_stop", "reason": "signal"}\n')
    assert main(["logs", str(tmp_path), "--follow", "--event", "step"]) == 0
    assert capsys.readouterr().out.split()[1:] == ["step", "step=1"]


def test_usage_errors_exit_2(capsys) -> None:
    assert main([]) == 2
    assert main(["train", "--device", "tpu"]) == 2
    assert main(["--help"]) == 0


async def test_an_existing_run_is_not_overwritten(tmp_path, fakes, capsys) -> None:
    await _fake_run(tmp_path / "run", fakes)
    capsys.readouterr()
    before = _snapshot(tmp_path)
    args = ["train", "--run-dir", str(tmp_path), "--name", "run"]
    assert await trio.to_thread.run_sync(main, args) == 1
    assert _one_error_line(capsys).endswith(f"(pgt resume {tmp_path / 'run'} continues it)")
    assert _snapshot(tmp_path) == before


def test_a_bad_backend_url_creates_nothing(tmp_path, capsys) -> None:
    pytest.importorskip("pgt._trainer")
    assert main(["train", "--backend", "nope://x", "--run-dir", str(tmp_path)]) == 1
    assert "nope" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_progress_off_a_terminal_prints_a_line_per_eval() -> None:
    status, result = io.StringIO(), io.StringIO()
    now = [0.0]
    progress = Progress(status=status, result=result, clock=lambda: now[0])
    progress.start(0, 100)
    for step in range(1, 51):
        now[0] += 0.5
        progress.step({"step": step, "loss": 1 / step, "ring_evals": 25_000 * step})
    progress.eval({"test_accuracy": 0.5})
    progress.finish("test accuracy 50.0%")
    assert status.getvalue() == ("step 50/100  loss 0.0200  test 50.0%  ring evals 1.25M  "
                                 "elapsed 25 s  left 25 s\n")
    assert result.getvalue() == "test accuracy 50.0%\n"


def test_progress_on_a_terminal_redraws_at_most_five_times_a_second() -> None:
    status, now = io.StringIO(), [0.0]
    progress = Progress(status=status, result=io.StringIO(), live=True, clock=lambda: now[0])
    progress.start(0, 1000)
    for step in range(1, 101):
        now[0] += 0.01  # 100 steps in one second
        progress.step({"step": step, "loss": 0.5, "ring_evals": step})
    assert 5 <= status.getvalue().count("\r\x1b[K") <= 6
    assert "\n" not in status.getvalue()


async def test_one_signal_abandons_a_long_device_wait(tmp_path, fakes, autojump_clock) -> None:
    # Each step waits 100 s on the fake ring; the signal comes in the middle of step 2.
    cfg = load_config(None, ["train.steps=5", "reservoir.url='fake://?delay=100'",
                             "train.checkpoint_every=1"])

    async def interrupt() -> None:
        await trio.sleep(150)
        os.kill(os.getpid(), signal.SIGINT)

    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(interrupt)
            result = await run_training(cfg, tmp_path / "run", resume=False, **fakes)
            stopped_at = trio.current_time()
    assert result["reason"] == "signal" and stopped_at < 151   # not after the 100 s wait
    assert logs[-1]["event"] == "run_stop" and logs[-1]["reason"] == "signal"
    assert latest_checkpoint(tmp_path / "run").name == "step-1"   # the last completed one


async def test_a_second_signal_stops_at_once(tmp_path, fakes, autojump_clock) -> None:
    # A device deaf to cancelling: the first signal cannot end its wait; the second does.
    cfg = load_config(None, ["train.steps=5", "reservoir.url='fake://?delay=100&shield=1'",
                             "train.checkpoint_every=1"])

    async def interrupt_twice() -> None:
        await trio.sleep(150)
        os.kill(os.getpid(), signal.SIGINT)
        await trio.sleep(10)
        os.kill(os.getpid(), signal.SIGINT)

    with capture_logs() as logs, pytest.RaisesGroup(RunInterrupted, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(interrupt_twice)
            await run_training(cfg, tmp_path / "run", resume=False, **fakes)
    assert logs[-1]["event"] == "run_stop" and logs[-1]["reason"] == "interrupted"
    assert latest_checkpoint(tmp_path / "run").name == "step-1"


def _wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while latest_checkpoint(run_dir) is None:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def test_sigint_once_checkpoints_and_exits_0(tmp_path) -> None:
    pytest.importorskip("pgt._trainer")
    run_dir = tmp_path / "sig"
    with subprocess.Popen(
            [sys.executable, "-m", "pgt", "train", "--run-dir", str(tmp_path), "--name",
             "sig", "--set", "train.steps=5000", "--set", "train.checkpoint_every=5"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            _wait_for_checkpoint(run_dir, proc)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    stop = events[-1]
    assert stop["event"] == "run_stop" and stop["reason"] == "signal"
    assert 0 < stop["step"] < 5000
    assert latest_checkpoint(run_dir).name == f"step-{stop['step']}"
    assert out.splitlines()[-1].startswith(f"stopped at step {stop['step']} of 5000")


def _errors() -> list:
    from pgt._checkpoint import CheckpointError
    from pgt._config import ConfigError
    from pgt._runloop import RunDirError, RunDiverged, SuspendLimitReached
    backend = pytest.importorskip("pgt.backends").ReservoirError
    return [(ConfigError("config: bad"), 2, "pgt: config: bad"),
            (CheckpointError("checkpoint x: checksum mismatch"), 1,
             "pgt: checkpoint x: checksum mismatch"),
            (RunDirError("no run directory at y"), 1, "pgt: no run directory at y"),
            (backend("ring unplugged"), 1, "pgt: ring unplugged"),
            (OSError(28, "No space left on device"), 1,
             "pgt: [Errno 28] No space left on device"),
            (RunInterrupted("interrupted by SIGINT"), 130, "pgt: interrupted by SIGINT"),
            (KeyboardInterrupt(), 130, "pgt: interrupted"),
            (RunDiverged("run diverged: step 3"), 3, "pgt: run diverged: step 3"),
            (SuspendLimitReached("no device"), 75, "pgt: no device")]


def _raising(error: BaseException, nested: bool):
    async def fail(*args, **kwargs):
        if nested:  # as trio's nurseries deliver it: groups within groups
            raise BaseExceptionGroup("nursery", [BaseExceptionGroup("inner", [error])])
        raise error
    return fail


@pytest.mark.parametrize("nested", [False, True])
def test_errors_from_nurseries_become_one_line_and_a_status(tmp_path, monkeypatch, capsys,
                                                           nested) -> None:
    for error, status, line in _errors():
        monkeypatch.setattr("pgt._runloop.run_training", _raising(error, nested))
        assert main(["train", "--run-dir", str(tmp_path)]) == status
        assert _one_error_line(capsys) == line


def test_result_lines() -> None:
    from pgt._progress import result_line
    done = {"reason": "finished", "step": 1500, "total_steps": 1500, "estimator": "interface",
            "ring_evals": 1_234_567, "elapsed_s": 84.2, "run_dir": "runs/x",
            "test_accuracy": 0.9761}
    assert result_line(done) == ("test accuracy 97.6% (estimator interface, 1500 steps, "
                                 "1.23M ring evaluations, 84 s) run runs/x")
    stopped = {**done, "reason": "signal", "step": 7, "test_accuracy": None}
    assert result_line(stopped) == (
        "stopped at step 7 of 1500, last test accuracy not measured yet (estimator "
        "interface, 7 steps, 1.23M ring evaluations, 84 s) run runs/x; pgt resume runs/x "
        "continues it")


def test_asking_for_a_gpu_without_one_is_a_one_line_error(tmp_path, capsys):
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed here")
    except ImportError:
        pass
    code = main(["train", "--device", "gpu", "--run-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith("pgt: ") and "gpu" in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []
