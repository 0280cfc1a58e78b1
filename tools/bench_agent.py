"""Are the rings kept busy? Duty cycle of N devices of latency L under real training.

    python tools/bench_agent.py [--latencies-ms 1 5 20] [--devices 1 2 4 8]
                                [--k-per-device 16 | --k K] [--seconds 10] [--json FILE]

For each (L, N) it trains the default model (digits, dense -> ring -> dense, batch 32)
with ``pgt`` (central pairs) through a DevicePool of N in-process devices and
measures, over a fixed stretch of wall time after one warm-up step (10 s by default,
some 60 steps at L = 5 ms: a duty cycle is a long-run figure, and on a shared machine
a few seconds' window swings with every pause of the host):

- duty cycle of each device: the time it spent evaluating (L per forward) over the
  wall time; the table shows the lowest of the N;
- probes per second (one probe = one forward of the batch) and its ratio to the
  ideal N/L.

How many directions a step has decides how long the devices work between two
updates, and the host's work between steps (the update, then the first probes of
the next step) is idle time for every device. By default K grows with the rack:
16 directions per device (the paper's K = 16 for each ring), so every ring runs 32
passes a step whatever N is (a rack bought to estimate more directions per step).
``--k K`` fixes K instead, so that each ring's share of a step shrinks as N grows.

The device (``LatencyRing``) is a real Reservoir, the pool's workers await its
``forward`` like any other: ``await trio.sleep(L)``, then features from a fixed
random square-law map of the inputs (|u·M|², 16 inputs -> 384 features, as
many as the default ring). It does not run the simulated ring's dynamics: those
cost ~2 ms of host CPU for 32 samples, which on a real rack the ring does, not the
host. The host does all the rest for real: the layers before and after the ring,
the perturbations, the estimator, the optimizer.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import trio

from pgt._config import load_config
from pgt._pool import DevicePool
from pgt._runloop import freeze_startup_objects
from pgt._trainer import Trainer
from pgt.backends import ReservoirInfo


class PreciseClock(trio.abc.Clock):
    """trio's default clock, but the loop polls instead of sleeping the last 2 ms.

    epoll's timeout has millisecond granularity (Python rounds it up), so a plain
    ``trio.sleep(0.005)`` lasts ~5.4 ms here and every emulated device would look
    8 % slower than its L. Polling only happens while the loop has nothing to run.
    """

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return time.perf_counter()

    def deadline_to_sleep_time(self, deadline: float) -> float:
        left = deadline - time.perf_counter()
        return 0.0 if left < 0.002 else left - 0.002


class LatencyRing:
    """A device that takes ``latency_s`` per forward; features |u M|²."""

    def __init__(self, latency_s: float, n_inputs: int = 16, n_features: int = 384) -> None:
        self.latency_s = latency_s
        self.info = ReservoirInfo("latency-ring", n_inputs, n_features, 65536)
        self.mask = np.random.default_rng(1234).standard_normal((n_inputs, n_features))
        self.forwards = 0
        self.free_at = 0.0

    async def forward(self, u):
        # One ring, a request FIFO: a request that arrives while the ring is busy starts
        # when the ring is free, and a reply is ready at its end even if the host's
        # loop is busy then.
        start = max(trio.current_time(), self.free_at)
        self.free_at = start + self.latency_s
        await trio.sleep_until(self.free_at)
        self.forwards += 1
        z = np.asarray(u) @ self.mask
        z *= z
        return z


async def measure(latency_s: float, n: int, cfg, seconds: float) -> dict:
    devices = [LatencyRing(latency_s) for _ in range(n)]
    pool = DevicePool(devices, [f"{i}:latency" for i in range(n)])
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        trainer = Trainer(cfg, pool)
        freeze_startup_objects()
        await trainer.train_step()   # warm-up: imports, first allocations
        start = [d.forwards for d in devices]
        t0, steps = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds or steps < 2:
            await trainer.train_step()
            steps += 1
        wall = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    forwards = [d.forwards - s for d, s in zip(devices, start)]
    duty = [f * latency_s / wall for f in forwards]
    probes_s = sum(forwards) / wall
    return {"latency_ms": latency_s * 1e3, "devices": n, "steps": steps, "wall_s": round(wall, 3),
            "duty_min": round(min(duty), 4), "duty_mean": round(float(np.mean(duty)), 4),
            "duty": [round(d, 4) for d in duty], "probes_per_s": round(probes_s, 1),
            "ideal_per_s": round(n / latency_s, 1), "ratio": round(probes_s * latency_s / n, 4)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latencies-ms", type=float, nargs="+", default=[1.0, 5.0, 20.0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--k-per-device", type=int, default=16,
                       help="K = this times the number of devices (default 16)")
    scale.add_argument("--k", type=int, help="a fixed K for every number of devices")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured wall time per row")
    parser.add_argument("--json", metavar="FILE", help="also write the rows here")
    args = parser.parse_args(argv)
    rows, batch = [], load_config(None, []).data.batch_size
    scaling = f"K = {args.k}" if args.k else f"K = {args.k_per_device} per device"
    print(f"estimator pgt (central), {scaling}, batch {batch}, {args.seconds} s a row\n")
    print("| L (ms) | devices | K | duty cycle, min (mean) | probes/s | ideal N/L | ratio |")
    print("|---|---|---|---|---|---|---|")
    for latency in args.latencies_ms:
        for n in args.devices:
            k = args.k or args.k_per_device * n
            cfg = load_config(None, ["estimator.name=pgt", f"estimator.k={k}",
                                     "train.steps=1000000"])
            row = trio.run(measure, latency / 1e3, n, cfg, args.seconds, clock=PreciseClock())
            row["k"] = k
            rows.append(row)
            print(f"| {latency:g} | {n} | {k} | {row['duty_min']:.3f} ({row['duty_mean']:.3f}) | "
                  f"{row['probes_per_s']:.0f} | {row['ideal_per_s']:.0f} | {row['ratio']:.3f} |",
                  flush=True)
    result = {"estimator": "pgt", "k_per_device": None if args.k else args.k_per_device,
              "k": args.k, "batch": batch, "rows": rows}
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
