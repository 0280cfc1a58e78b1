"""Fault soak: train through the emulated microcontroller while the link misbehaves.

    .venv/bin/python tools/fault_soak.py [--steps 300] [--link memory|pty] [--corrupt 0.01]
                                         [--reset-every 500] [--unplug-at 1200]

Runs the same training twice through the emulator: once clean, once with a share of
the bytes corrupted in both directions, a watchdog reset every N FORWARDs and one
unplug/replug. It then reads the faulty run's events.jsonl and checks that the run
finished, that every trial id has exactly one accepted result (and that their
number is the number of ring evaluations), that the final accuracy is within one
point of the clean run's, and that every injected fault shows up as log events.
``--link memory`` runs on trio's virtual clock (seconds); ``--link pty`` runs the
real pty and pyserial in real time, unplugging the pty (a stable symlink follows).

At 1 % corrupted bytes a frame of L bytes arrives intact with probability 0.99^L,
so the soak keeps frames short: one sample per FORWARD, 16 features at 8 bits
(CONFIGURE samples 2 input steps of 8 nodes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import structlog
import trio
import trio.testing

from pgt._config import load_config
from pgt._runloop import run_training
from pgt.backends import EmulatedDevice, EmulatorConfig, FaultSpec, open_reservoir, serve_pty
from pgt.kernels import RingParams

HOST = "sample_steps=6-7&sample_nodes=0-7&bits=8&batch=1&log_trials=1&quarantine_after=8"
RING = dict(ring=RingParams(nodes=8), n_inputs=8, max_batch=4)


def _settings(steps: int) -> list[str]:
    return [f"train.steps={steps}", f"train.eval_every={steps}", "train.checkpoint_every=0",
            "data.batch_size=16", "estimator.k=2"]


async def _train(run_dir: Path, steps: int, faults: FaultSpec, link: str) -> EmulatedDevice:
    """One run through an emulator with ``faults``; returns the emulator (its ``stats``
    count the faults, its ``injected`` list each one)."""
    device = EmulatedDevice(EmulatorConfig(faults=faults, **RING))

    opener = open_reservoir
    async with trio.open_nursery() as nursery:
        if link == "pty":
            tty = run_dir.parent / f"{run_dir.name}.tty"
            await nursery.start(lambda task_status: serve_pty(device, link=tty, task_status=task_status))
            url = f"serial://{tty}?{HOST}&baud=115200"
        else:
            url = f"memory://?{HOST}"
            opener = _memory_opener(device, nursery)
        cfg = load_config(None, _settings(steps) + [f'reservoir.url="{url}"'])
        await run_training(cfg, run_dir, resume=False, open_reservoir=opener)
        nursery.cancel_scope.cancel()
    return device


def _memory_opener(emulator: EmulatedDevice, nursery: trio.Nursery):
    """open_reservoir for ``memory://?...``: ``emulator`` on an in-memory link."""
    from pgt.backends._device import open_device
    from pgt.backends._device_open import _options, _parse
    from pgt.backends._emulate import MemoryLink

    @contextlib.asynccontextmanager
    async def opener(url, **_):
        host, _, _ = _parse(url, "memory")
        link = MemoryLink(emulator, nursery)
        async with open_device(link.connect, _options(host), "emu (in-memory)") as reservoir:
            yield reservoir

    return opener


def _events(run_dir: Path) -> list[dict]:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def summarize(clean_dir: Path, faulty_dir: Path, device: EmulatedDevice) -> dict:
    from pgt.backends._faults import unseen_faults

    injected = device.stats
    clean, faulty = _events(clean_dir), _events(faulty_dir)
    names = Counter(e["event"] for e in faulty)
    ids = Counter(e["trial_id"] for e in faulty if e["event"] == "trial_accepted")
    last = {e["event"]: e for e in faulty}
    ring_evals = last["step"]["ring_evals"] + last["eval"]["eval_ring_evals"]
    causes = Counter(e["reset_cause"] for e in faulty if e["event"] == "device_reconnect")
    acc_clean, acc_faulty = (last_eval["test_accuracy"] for last_eval in
                             ([e for e in clean if e["event"] == "eval"][-1],
                              last["eval"]))
    return {
        "finished": last["run_stop"]["reason"] == "finished",
        "trials": len(ids), "ring_evals": ring_evals,
        "each_trial_once": set(ids.values()) == {1} and sorted(ids) == list(range(1, len(ids) + 1))
        and len(ids) == ring_evals,
        "accuracy_clean": acc_clean, "accuracy_faulty": acc_faulty,
        "accuracy_within_1_point": abs(acc_clean - acc_faulty) <= 0.01,
        "injected": dict(injected),
        "logged": {k: names[k] for k in ("device_retry", "device_garbled_frame", "device_stale_reply",
                                         "device_fault", "device_reconnect", "device_quarantined",
                                         "device_recovered", "run_suspended")},
        "reconnect_reset_causes": dict(causes),
        # Each fault the emulator injected, matched to the host event that saw it.
        "faults_injected": len(device.injected),
        "faults_unseen": len(unseen_faults(device.injected, faulty)),
        "every_fault_logged": not unseen_faults(device.injected, faulty),
    }


async def soak(root: Path, *, steps: int = 30, link: str = "memory", corrupt: float = 0.01,
               reset_every: int = 500, unplug_at: int = 1200, seed: int = 1) -> dict:
    """Run the clean and the faulty training under ``root``; return the summary."""
    await _train(root / "clean", steps, FaultSpec(), link)
    faults = FaultSpec(corrupt=corrupt, reset_every=reset_every, unplug_at=unplug_at,
                       unplug_s=2.0, seed=seed)
    device = await _train(root / "faulty", steps, faults, link)
    return summarize(root / "clean", root / "faulty", device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--link", choices=("memory", "pty"), default="memory")
    parser.add_argument("--corrupt", type=float, default=0.01)
    parser.add_argument("--reset-every", type=int, default=500)
    parser.add_argument("--unplug-at", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    # Before a run's own log opens, device events would go to the console: drop them.
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    clock = trio.testing.MockClock(autojump_threshold=0) if args.link == "memory" else None
    with tempfile.TemporaryDirectory() as tmp:
        summary = trio.run(lambda: soak(Path(tmp), steps=args.steps, link=args.link,
                                        corrupt=args.corrupt, reset_every=args.reset_every,
                                        unplug_at=args.unplug_at, seed=args.seed), clock=clock)
    for key, value in summary.items():
        print(f"{key:26s} {value}")
    print(json.dumps(summary))
    ok = all(summary[k] for k in ("finished", "each_trial_once", "accuracy_within_1_point",
                                  "every_fault_logged"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
