"""Drive one run to completion through everything a weekend can throw at it.

    python tools/chaos.py [--kills 10] [--steps 300] [--seed S] [--out DIR]

The ring is the emulated microcontroller in its own process, on a TCP port
(``pgt emulate --tcp``); the trainer is ``pgt train`` / ``pgt resume`` in another.
Against one uninterrupted run of the same settings, the chaos run suffers:

- ``--kills`` SIGKILLs of the trainer at random moments (each once its session has
  started), each followed by ``pgt resume``;
- three kills of the device process, each restarted on the same port a moment later
  while the trainer runs on;
- one corrupted newest checkpoint (a flipped byte), which the next resume must pass
  over;
- one concurrent ``pgt resume`` while a trainer is live, which must be refused.

It then checks that the final parameters are bit-identical to the uninterrupted run's,
that the deduplicated log holds every step once, and that each injected fault left
its trace in the run's events (a taken-over lock per kill, device faults per device
kill, a skipped checkpoint), and prints a table. Exit status 0 when every check holds.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from pgt._checkpoint import latest_checkpoint, load_checkpoint
from pgt._logging import dedupe, read_events

SETTINGS = ["--set", "train.checkpoint_every=5", "--set", "train.eval_every=50",
            "--set", "train.checkpoint_seconds=1000", "--quiet"]


def _pgt(*args: str) -> list[str]:
    return [sys.executable, "-m", "pgt", *args]


class Device:
    """The emulated microcontroller in its own process, on one TCP port throughout."""

    def __init__(self) -> None:
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(_pgt("emulate", "--tcp", str(self.port), "--latency-ms", "1"),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if "socket://" not in line:
            raise SystemExit(f"chaos: the emulator did not start: {self.proc.stderr.read()}")
        self.port = int(line.rsplit(":", 1)[1])

    def kill(self) -> None:
        self.proc.kill()
        self.proc.communicate()

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"


def _sessions(run: Path) -> int:
    path = run / "events.jsonl"
    return sum(1 for e in read_events(path) if e.get("event") == "run_start") if path.is_file() else 0


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"chaos: timed out waiting for {what}")
        time.sleep(0.01)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def chaos(out: Path, kills: int, steps: int, seed: int) -> list[tuple[str, str, bool]]:
    rng = random.Random(seed)
    device = Device()
    checks: list[tuple[str, str, bool]] = []
    injected = {"trainer kills": 0, "device kills": 0, "corrupted checkpoints": 0,
                "concurrent resumes refused": 0}
    try:
        common = ["--backend", device.url, "--set", f"train.steps={steps}", *SETTINGS,
                  "--run-dir", str(out)]
        whole = subprocess.run(_pgt("train", *common, "--name", "whole"), capture_output=True,
                               text=True, timeout=600)
        if whole.returncode:
            raise SystemExit(f"chaos: the uninterrupted run failed: {whole.stderr}")
        run = out / "chaos"
        device_kill_at = set(rng.sample(range(1, kills), 3))
        corrupt_at, concurrent_at = rng.sample(sorted(set(range(1, kills)) - device_kill_at), 2)
        for round_ in range(kills):
            started = _sessions(run)
            argv = (_pgt("train", *common, "--name", "chaos") if round_ == 0
                    else _pgt("resume", str(run), "--quiet"))
            trainer = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
            _wait(lambda: _sessions(run) > started or trainer.poll() is not None, 120,
                  "a session to start")
            if trainer.poll() is not None:
                raise SystemExit(f"chaos: the trainer ended early: {trainer.communicate()}")
            if round_ == concurrent_at:
                second = subprocess.run(_pgt("resume", str(run), "--quiet"), capture_output=True,
                                        text=True, timeout=120)
                refused = second.returncode == 1 and "is in use by pid" in second.stderr
                injected["concurrent resumes refused"] += refused
            if round_ in device_kill_at:
                time.sleep(rng.uniform(0.1, 0.5))
                device.kill()
                injected["device kills"] += 1
                time.sleep(rng.uniform(0.5, 1.5))   # the trainer retries, reconnects
                device.start()
            time.sleep(rng.uniform(0.2, 1.2))
            if trainer.poll() is not None:
                raise SystemExit(f"chaos: the run finished before kill {round_ + 1}; "
                                 f"give it more --steps")
            trainer.send_signal(signal.SIGKILL)
            trainer.communicate()
            injected["trainer kills"] += 1
            if round_ == corrupt_at and latest_checkpoint(run) is not None:
                _flip_byte(latest_checkpoint(run) / "arrays.npz")
                injected["corrupted checkpoints"] += 1
        final = subprocess.run(_pgt("resume", str(run), "--quiet"), capture_output=True,
                               text=True, timeout=600)
        checks.append(("the last resume finishes", f"exit {final.returncode}",
                       final.returncode == 0))
    finally:
        device.kill()
    events = list(read_events(run / "events.jsonl"))
    a, _ = load_checkpoint(latest_checkpoint(out / "whole"))
    b, _ = load_checkpoint(latest_checkpoint(run))
    same = a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)
    checks.append(("final state bit-identical to the uninterrupted run",
                   f"{len(a)} arrays, step {int(b['step'])}", same))
    logged = [e["step"] for e in dedupe(events) if e.get("event") == "step"]
    raw = [e["step"] for e in events if e.get("event") == "step"]
    checks.append(("each step once in the deduplicated log",
                   f"{len(logged)} of {len(raw)} step events", logged == list(range(1, steps + 1))))
    taken = sum(1 for e in events if e.get("event") == "run_resumed" and e.get("lock_taken_over"))
    checks.append(("every trainer kill logged (a taken-over lock)",
                   f"{taken} of {injected['trainer kills']}", taken == injected["trainer kills"]))
    faults = sum(1 for e in events if e.get("event") in ("device_fault", "device_reconnect"))
    checks.append(("device kills logged (device_fault / device_reconnect)",
                   f"{faults} events for {injected['device kills']} kills",
                   faults >= injected["device kills"] > 0))
    skipped = sum(len(e.get("skipped", ())) for e in events if e.get("event") == "run_resumed")
    checks.append(("the corrupted checkpoint passed over and logged",
                   f"{skipped} skipped for {injected['corrupted checkpoints']} corrupted",
                   skipped == injected["corrupted checkpoints"] == 1))
    checks.append(("the concurrent resume refused", f"{injected['concurrent resumes refused']} of 1",
                   injected["concurrent resumes refused"] == 1))
    return checks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=None, help="of the chaos (default: random)")
    parser.add_argument("--out", help="folder for the runs (default: a temporary one)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="pgt-chaos-"))
    if args.kills < 6:
        parser.error("--kills must be at least 6 (the device kills, the corruption and the "
                     "concurrent resume each ride on a kill of their own)")
    print(f"chaos seed {seed} (--seed {seed} repeats it), runs in {out}")
    checks = chaos(out, args.kills, args.steps, seed)
    print("| check | measured | holds |")
    print("|---|---|---|")
    for name, measured, ok in checks:
        print(f"| {name} | {measured} | {'yes' if ok else 'NO'} |")
    if not args.out:
        shutil.rmtree(out, ignore_errors=True)
    return 0 if all(ok for _, _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
