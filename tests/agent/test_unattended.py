"""Runs left alone: one writer per run, a bound on suspension, divergence, resume that
can extend and re-point a run, and logs that show each step once."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import trio
from structlog.testing import capture_logs

from pgt._checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from pgt._config import ConfigError, load_config
from pgt._lock import LOCK_FILE, held_by
from pgt._logging import dedupe, read_events
from pgt._runloop import (RunDirError, SuspendLimitReached, resume_config, run_training)
from pgt.backends import DeviceHealth
from pgt.cli import main
from tests.agent.test_resume import SMALL, assert_same_final_state
from tests.conftest import FakeReservoir, FakeTrainer


def _pgt(*args: str) -> list[str]:
    return [sys.executable, "-m", "pgt", *args]


# -- one writer per run --------------------------------------------------------------------


def test_a_second_process_on_a_live_run_is_refused_and_the_first_finishes_bit_exact(tmp_path):
    # An emulated device that takes 3 ms a FORWARD keeps the live run going for seconds.
    common = ["--set", "train.steps=300", "--set", "train.checkpoint_every=50",
              "--set", "train.eval_every=100", "--run-dir", str(tmp_path), "--quiet"]
    # the reference needs no latency: the device's delay changes no bit of the run
    assert main(["train", "--name", "alone", *common, "--backend", "emu://?nodes=8"]) == 0
    common += ["--backend", "emu://?nodes=8&latency_ms=3"]
    run = tmp_path / "live"
    with subprocess.Popen(_pgt("train", "--name", "live", *common), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        deadline = time.monotonic() + 60
        while held_by(run) is None:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.01)
        second = subprocess.run(_pgt("resume", str(run), "--quiet"), capture_output=True,
                                text=True, timeout=60)
        still_running = proc.poll() is None
        out, err = proc.communicate(timeout=120)
    assert still_running, "the live run ended before the second process tried it"
    assert second.returncode == 1
    line = second.stderr.strip()
    assert line.startswith(f"pgt: run directory {run} is in use by pid {proc.pid} on ")
    assert "\n" not in line and "Traceback" not in second.stderr
    assert proc.returncode == 0, err
    assert_same_final_state(tmp_path / "alone", run, 300)
    steps = [e["step"] for e in read_events(run / "events.jsonl") if e["event"] == "step"]
    assert steps == list(range(1, 301))   # nobody else wrote a step


async def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, fakes, autojump_clock):
    cfg = load_config(None, SMALL)
    await run_training(cfg, tmp_path / "whole", resume=False, **fakes)
    run = tmp_path / "run"
    await run_training(load_config(None, [*SMALL, "train.steps=8"]), run, resume=False, **fakes)
    (run / LOCK_FILE).write_text("999999 deadhost\n")   # as a SIGKILLed holder leaves it
    assert held_by(run) is None
    cfg, changes = resume_config(run, ["train.steps=12"])
    with capture_logs() as logs:
        await run_training(cfg, run, resume=True, changes=changes, **fakes)
    resumed = next(e for e in logs if e["event"] == "run_resumed")
    assert resumed["lock_taken_over"] == "999999 deadhost"
    assert resumed["changes"] == {"train.steps": [8, 12]}


async def test_two_runs_in_one_process_on_one_directory_are_one_too_many(tmp_path, fakes,
                                                                        autojump_clock):
    cfg = load_config(None, [*SMALL, "reservoir.url='fake://?delay=100'"])
    await run_training(load_config(None, [*SMALL, "train.steps=4"]), tmp_path / "r",
                       resume=False, **fakes)
    errors = []

    async def second():
        await trio.sleep(50)
        try:
            await run_training(cfg, tmp_path / "r", resume=True, **fakes)
        except RunDirError as e:
            errors.append(str(e))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(second)
        await run_training(load_config(None, [*SMALL, "train.steps=8",
                                              "reservoir.url='fake://?delay=100'"]),
                           tmp_path / "r", resume=True, changes={"train.steps": (4, 8)}, **fakes)
    assert len(errors) == 1 and f"is in use by pid {os.getpid()}" in errors[0]


# -- a ring that dies for good -------------------------------------------------------------


class DeadRing(FakeReservoir):
    """A device that answers a few forwards, then is quarantined and never answers."""

    def __init__(self, answers: int) -> None:
        super().__init__(1.0)
        self.answers = answers
        self.health = DeviceHealth()

    async def forward(self, u):
        if self.answers <= 0:
            self.health.quarantine("link lost: no reply after 3 retries")
            await trio.sleep_forever()
        self.answers -= 1
        return await super().forward(u)


def _dead_ring(answers: int):
    @contextlib.asynccontextmanager
    async def open_dead(url, *, seed=0, device="cpu"):
        yield DeadRing(answers)
    return open_dead


async def test_past_the_suspend_limit_the_run_checkpoints_and_ends_with_its_code(
        tmp_path, autojump_clock, capsys):
    cfg = load_config(None, [*SMALL, "reservoir.suspend_limit_s=300", "train.eval_every=100"])
    with capture_logs() as logs, pytest.RaisesGroup(SuspendLimitReached,
                                                    flatten_subgroups=True) as caught:
        await run_training(cfg, tmp_path / "r", resume=False, make_trainer=FakeTrainer,
                           open_reservoir=_dead_ring(5))
        # 5 forwards: steps 1-5 done, step 6 waits on the dead ring
    message = str(caught.value.exceptions[0])
    assert message.startswith("no device in service for 300 s (reservoir.suspend_limit_s = 300)")
    assert "link lost: no reply after 3 retries" in message and "step 5 is checkpointed" in message
    assert latest_checkpoint(tmp_path / "r").name == "step-5"
    names = [e["event"] for e in logs]
    assert names.count("run_still_suspended") == 4   # every 60 s of the 300
    assert names[-2:] == ["checkpoint_saved", "run_stop"] and logs[-1]["reason"] == "suspend_limit"
    assert trio.current_time() < 5 + 300 + 5


async def test_one_signal_while_suspended_checkpoints_and_returns(tmp_path, autojump_clock):
    import signal

    cfg = load_config(None, [*SMALL, "reservoir.suspend_limit_s=0", "train.eval_every=100"])

    async def interrupt():
        await trio.sleep(3600)   # an hour into the suspension
        os.kill(os.getpid(), signal.SIGTERM)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(interrupt)
        result = await run_training(cfg, tmp_path / "r", resume=False,
                                    make_trainer=FakeTrainer, open_reservoir=_dead_ring(7))
    assert result["reason"] == "signal" and latest_checkpoint(tmp_path / "r").name == "step-7"


# -- divergence ----------------------------------------------------------------------------


def _all_finite(run: Path) -> bool:
    return all(np.isfinite(a).all() for p in list_checkpoints(run)
               for a in load_checkpoint(p)[0].values() if a.dtype.kind == "f")


def test_a_diverging_run_stops_with_one_line_and_no_non_finite_checkpoint(tmp_path, capsys):
    code = main(["train", "--set", "optimizer.lr=1e9", "--set", "train.steps=200",
                 "--set", "train.checkpoint_every=1", "--backend", "sim://ring?nodes=8",
                 "--run-dir", str(tmp_path), "--name", "d", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 3 and "\n" not in err
    assert err.startswith("pgt: run diverged: step ") and "is not finite" in err
    assert list_checkpoints(tmp_path / "d") and _all_finite(tmp_path / "d")
    stop = [e for e in read_events(tmp_path / "d" / "events.jsonl") if e["event"] == "run_stop"]
    assert stop[-1]["reason"] == "diverged"


class TooFast(FakeTrainer):
    """Goes non-finite at step 7 unless its learning rate was cut to a quarter."""

    lr_factor = 1.0

    async def train_step(self):
        from pgt._trainer import Diverged

        if self.step == 6 and self.lr_factor > 0.3:
            await self.reservoir.forward(self.params[None])
            raise Diverged(7, "loss")
        return await super().train_step()

    def state_dict(self):
        return {**super().state_dict(), "lr_factor": np.asarray(self.lr_factor)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.lr_factor = float(state.get("lr_factor", 1.0))


async def test_rollback_goes_back_to_the_checkpoint_at_half_the_rate_and_finishes(
        tmp_path, autojump_clock):
    cfg = load_config(None, [*SMALL, "train.on_divergence=rollback"])
    with capture_logs() as logs:
        result = await run_training(cfg, tmp_path / "r", resume=False, make_trainer=TooFast,
                                    open_reservoir=fakes_open())
    rollbacks = [e for e in logs if e["event"] == "run_rollback"]
    assert [(e["step"], e["to_step"], e["lr_factor"]) for e in rollbacks] == [
        (7, 4, 0.5), (7, 4, 0.25)]
    assert result["reason"] == "finished" and result["step"] == 12
    assert float(load_checkpoint(latest_checkpoint(tmp_path / "r"))[0]["lr_factor"]) == 0.25
    # A resumed run keeps the lowered rate: it is part of the state.
    again = await run_training(cfg, tmp_path / "r", resume=True, make_trainer=TooFast,
                               open_reservoir=fakes_open())
    assert again["step"] == 12


def fakes_open():
    from tests.conftest import fake_reservoir
    return fake_reservoir


def test_rollbacks_that_cannot_save_the_run_end_it(tmp_path, capsys):
    # lr = 1e7: every checkpoint before the blow-up already holds huge parameters.
    code = main(["train", "--set", "optimizer.lr=1e7", "--set", "train.steps=100",
                 "--set", "train.checkpoint_every=10", "--set", "train.on_divergence=rollback",
                 "--backend", "sim://ring?nodes=8", "--run-dir", str(tmp_path), "--name", "r",
                 "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 3 and "its rollbacks are spent" in err and "\n" not in err
    rollbacks = [e for e in read_events(tmp_path / "r" / "events.jsonl")
                 if e["event"] == "run_rollback"]
    assert [e["lr_factor"] for e in rollbacks] == [0.5 ** (i + 1) for i in range(5)]
    assert _all_finite(tmp_path / "r")


# -- resume that extends and re-points -----------------------------------------------------


COMMON = ["--set", "optimizer.schedule=constant", "--set", "train.checkpoint_every=10",
          "--set", "train.eval_every=10", "--quiet"]


def test_resume_extends_a_run_bit_exactly_and_re_points_its_device(tmp_path, capsys):
    a = ["--backend", "sim://ring?nodes=8"]
    assert main(["train", *a, *COMMON, "--set", "train.steps=40", "--run-dir", str(tmp_path),
                 "--name", "whole"]) == 0
    assert main(["train", *a, *COMMON, "--set", "train.steps=20", "--run-dir", str(tmp_path),
                 "--name", "short"]) == 0
    # The same ring at a "new address": the URL spelled differently, same device.
    assert main(["resume", str(tmp_path / "short"), "--set", "train.steps=40", "--backend",
                 "sim://ring?nodes=8&gain=0.85", "--quiet"]) == 0
    assert_same_final_state(tmp_path / "whole", tmp_path / "short", 40)
    saved = load_config(tmp_path / "short" / "config.toml")
    assert saved.train.steps == 40 and saved.reservoir.url == "sim://ring?nodes=8&gain=0.85"
    resumed = [e for e in read_events(tmp_path / "short" / "events.jsonl")
               if e["event"] == "run_resumed"]
    assert resumed[-1]["changes"] == {"train.steps": [20, 40], "reservoir.url": [
        "sim://ring?nodes=8", "sim://ring?nodes=8&gain=0.85"]}


def test_resume_refuses_a_change_that_changes_the_results(tmp_path, capsys):
    assert main(["train", "--backend", "sim://ring?nodes=8", *COMMON, "--set", "train.steps=10",
                 "--run-dir", str(tmp_path), "--name", "r"]) == 0
    before = (tmp_path / "r" / "config.toml").read_bytes()
    capsys.readouterr()
    assert main(["resume", str(tmp_path / "r"), "--set", "optimizer.lr=0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pgt: config: resume cannot change 'optimizer.lr' (0.01 -> 0.5)")
    assert (tmp_path / "r" / "config.toml").read_bytes() == before
    with pytest.raises(ConfigError, match="unknown key"):
        resume_config(tmp_path / "r", ["train.stepz=3"])


def test_a_damaged_newest_checkpoint_is_passed_over_and_kept(tmp_path, capsys):
    args = ["--backend", "sim://ring?nodes=8", *COMMON, "--run-dir", str(tmp_path)]
    assert main(["train", *args, "--set", "train.steps=30", "--name", "whole"]) == 0
    assert main(["train", *args, "--set", "train.steps=30", "--name", "r"]) == 0
    run = tmp_path / "r"
    newest = latest_checkpoint(run)
    (newest / "arrays.npz").write_bytes(b"garbage")   # step-30 broken: step-20 is good
    (run / "checkpoints" / "step-20").rename(run / "checkpoints" / "step-20")
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    assert "(step 20," in capsys.readouterr().out
    # resume from the step-20 checkpoint; the damaged one stays until the new step-30
    # replaces it, and the run ends on the uninterrupted run's bits
    assert main(["resume", str(run), "--set", "train.steps=30"]) == 0
    err = capsys.readouterr().err
    assert "passed over a damaged checkpoint" in err and "checksum mismatch" in err
    assert_same_final_state(tmp_path / "whole", run, 30)


def test_resume_from_a_named_checkpoint(tmp_path, capsys):
    args = ["--backend", "sim://ring?nodes=8", *COMMON, "--run-dir", str(tmp_path)]
    assert main(["train", *args, "--set", "train.steps=30", "--set",
                 "train.keep_checkpoints=5", "--name", "r"]) == 0
    assert main(["resume", str(tmp_path / "r"), "--from", "step-10"]) == 0
    events = list(read_events(tmp_path / "r" / "events.jsonl"))
    assert [e["step"] for e in events if e["event"] == "run_resumed"] == [10]
    assert main(["resume", str(tmp_path / "r"), "--from", "step-7"]) == 1
    assert "no checkpoint step-7" in capsys.readouterr().err


def test_a_run_whose_checkpoints_are_gone_is_not_started_over(tmp_path, capsys):
    assert main(["train", "--backend", "sim://ring?nodes=8", *COMMON, "--set",
                 "train.steps=20", "--run-dir", str(tmp_path), "--name", "r"]) == 0
    import shutil

    shutil.rmtree(tmp_path / "r" / "checkpoints")
    capsys.readouterr()
    assert main(["resume", str(tmp_path / "r")]) == 1
    assert "refusing to start it over" in capsys.readouterr().err
    assert not (tmp_path / "r" / "checkpoints").exists()


# -- logs ------------------------------------------------------------------------------------


async def test_logs_show_each_step_once_after_any_number_of_resumes(tmp_path, fakes,
                                                                   autojump_clock):
    cfg = load_config(None, SMALL)

    async def stop_after(seconds):
        await trio.sleep(seconds)
        os.kill(os.getpid(), __import__("signal").SIGINT)

    import shutil

    for attempt, delay in enumerate((6.5, 3.2)):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_after, delay)
            result = await run_training(cfg, tmp_path / "r", resume=attempt > 0, **fakes)
            nursery.cancel_scope.cancel()
        # As a kill before the stop's checkpoint would leave it: the last steps re-run.
        if result["step"] % 4:
            shutil.rmtree(tmp_path / "r" / "checkpoints" / f"step-{result['step']}")
    await run_training(cfg, tmp_path / "r", resume=True, **fakes)
    events = list(read_events(tmp_path / "r" / "events.jsonl"))
    assert len([e for e in events if e["event"] == "step"]) > 12        # some ran twice
    assert sorted({e["session"] for e in events}) == [1, 2, 3]
    shown = [e["step"] for e in dedupe(events) if e["event"] == "step"]
    assert shown == list(range(1, 13))
    assert all(e["run_id"] == "r" for e in events)


def test_pgt_logs_survives_bad_bytes_and_a_torn_line(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "events.jsonl").write_bytes(
        b'{"event": "step", "step": 1, "loss": 1.0}\n\xff\xfe garbage\n'
        b'{"event": "step", "step": 2, "loss": 0.5}\n{"event": "st')
    assert main(["logs", str(run)]) == 0
    out = capsys.readouterr().out
    assert "loss=1" in out and "loss=0.5" in out
    assert main(["plot", str(run)]) == 1   # no eval events yet: one line, no traceback
    assert capsys.readouterr().err.startswith("pgt: no eval events")


def test_logs_follow_ends_when_the_run_s_process_is_gone(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "events.jsonl").write_text('{"event": "run_start", "step": 0}\n'
                                      '{"event": "step", "step": 1, "loss": 1.0}\n')
    (run / LOCK_FILE).write_text("12345 elsewhere\n")   # killed: no run_stop, no holder
    done = subprocess.run(_pgt("logs", str(run), "--follow"), capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0 and "loss=1" in done.stdout


def test_a_closed_pipe_is_not_an_error(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "events.jsonl").write_text("".join(
        json.dumps({"event": "step", "step": i, "loss": 1.0}) + "\n" for i in range(20000)))
    pipe = subprocess.run(f"{sys.executable} -m pgt logs {run} | head -1", shell=True,
                          capture_output=True, text=True, timeout=60)
    assert pipe.returncode == 0 and pipe.stderr == "" and "step=0" in pipe.stdout


def test_step_events_can_be_thinned_for_long_runs(tmp_path, capsys):
    assert main(["train", "--backend", "sim://ring?nodes=8", *COMMON, "--set",
                 "train.steps=30", "--set", "train.log_every=7", "--run-dir", str(tmp_path),
                 "--name", "r"]) == 0
    steps = [e["step"] for e in read_events(tmp_path / "r" / "events.jsonl")
             if e["event"] == "step"]
    assert steps == [7, 10, 14, 20, 21, 28, 30]


def test_runs_started_in_the_same_second_get_distinct_directories(tmp_path):
    argv = _pgt("train", "--backend", "sim://ring?nodes=4", "--set", "train.steps=3",
                "--run-dir", str(tmp_path), "--quiet")
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    assert [code for _, _, code in results] == [0, 0, 0], results
    runs = sorted(p.name for p in tmp_path.iterdir())
    assert len(runs) == 3, runs
    for run in runs:
        steps = [e["step"] for e in read_events(tmp_path / run / "events.jsonl")
                 if e["event"] == "step"]
        assert steps == [1, 2, 3]   # each its own, whole


def test_the_status_line_fits_a_narrow_terminal(monkeypatch):
    import io
    import os as _os

    from pgt._progress import Progress

    monkeypatch.setattr("shutil.get_terminal_size", lambda fallback=None: _os.terminal_size((30, 5)))
    status = io.StringIO()
    progress = Progress(status=status, result=io.StringIO(), live=True, clock=lambda: 0.0)
    progress.start(0, 1000)
    progress.step({"step": 5, "loss": 1.2345, "ring_evals": 123456})
    drawn = status.getvalue().split("\x1b[K")[-1]
    assert 0 < len(drawn) < 30 and drawn.endswith("…")


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_signal_during_start_up_is_one_line_and_no_traceback(tmp_path, signum):
    import signal

    outcomes = []
    for delay in (0.2, 0.4, 0.7, 1.0):
        with subprocess.Popen(_pgt("train", "--backend", "sim://ring?nodes=8", "--run-dir",
                                   str(tmp_path / f"{signum}-{delay}"), "--quiet"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
            time.sleep(delay)
            proc.send_signal(getattr(signal, signum))
            out, err = proc.communicate(timeout=120)
        outcomes.append((delay, proc.returncode, err.strip()))
        assert "Traceback" not in err, (delay, err)
        lines = err.strip().splitlines()
        # Before the process handles signals at all it just ends; after, one line.
        assert len(lines) <= 1 and all(line.startswith("pgt: ") for line in lines), outcomes
        assert proc.returncode != 0 or "stopped at step" in out
    assert any(err for _, _, err in outcomes) or any(code == 0 for _, code, _ in outcomes)
