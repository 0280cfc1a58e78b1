"""A ring that dies for good, over a real TCP link: the emulated microcontroller is
another process, killed mid-run. One SIGTERM ends the trainer within seconds with
the last completed step checkpointed; once the device is back, ``pgt resume``
finishes on the bits of a run that was never interrupted."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from pgt._checkpoint import latest_checkpoint
from pgt._logging import read_events
from tests.agent.test_resume import assert_same_final_state

STEPS = ["--set", "train.steps=200", "--set", "train.checkpoint_every=20",
         "--set", "train.eval_every=50", "--quiet"]


def _pgt(*args: str) -> list[str]:
    return [sys.executable, "-m", "pgt", *args]


def _emulator(port: int = 0) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(_pgt("emulate", "--tcp", str(port), "--latency-ms", "2"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()   # "emulating pgt-emulator/1 on socket://127.0.0.1:PORT"
    assert "socket://" in line, proc.stderr.read()
    return proc, int(line.rsplit(":", 1)[1])


def _wait(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen"
        time.sleep(0.02)


def test_the_device_killed_for_good_then_one_sigterm_then_resume(tmp_path):
    emulator, port = _emulator()
    try:
        url = f"socket://127.0.0.1:{port}"
        whole = subprocess.run(_pgt("train", "--backend", url, *STEPS, "--run-dir", str(tmp_path),
                                    "--name", "whole"), capture_output=True, text=True, timeout=120)
        assert whole.returncode == 0, whole.stderr
        run = tmp_path / "cut"
        trainer = subprocess.Popen(_pgt("train", "--backend", url, *STEPS, "--run-dir",
                                        str(tmp_path), "--name", "cut"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait(lambda: (run / "checkpoints" / "step-40").is_dir(), "step-40")
        emulator.kill()   # for good: nothing answers on the port any more
        emulator.communicate()
        time.sleep(1.5)   # the trainer is now retrying, reconnecting or suspended
        assert trainer.poll() is None
        sent = time.monotonic()
        trainer.send_signal(signal.SIGTERM)
        out, err = trainer.communicate(timeout=30)
        took = time.monotonic() - sent
        assert trainer.returncode == 0, err
        assert took < 10, f"SIGTERM took {took:.1f} s"
        assert "stopped at step" in out
        events = list(read_events(run / "events.jsonl"))
        last_step = max(e["step"] for e in events if e["event"] == "step")
        saved = latest_checkpoint(run).name
        assert saved == f"step-{last_step}", (saved, last_step)   # the last completed one
        stops = [e for e in events if e["event"] == "run_stop"]
        assert [e["reason"] for e in stops] == ["signal"] and stops[0]["step"] == last_step
        assert all(e.get("run_id") == "cut" for e in events)

        emulator, _ = _emulator(port)   # the device is back, at the same address
        resumed = subprocess.run(_pgt("resume", str(run), "--quiet"), capture_output=True,
                                 text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        assert_same_final_state(tmp_path / "whole", run, 200)
    finally:
        emulator.kill()
        emulator.communicate()
