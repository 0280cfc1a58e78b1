"""Link budget: wire efficiency of the protocol, and where a training step's time goes.

    .venv/bin/python tools/link_budget.py [--steps 1]

1. Wire efficiency of a typical FORWARD/RESULT exchange (the default ring: 16 input
   steps, 24 nodes, a FORWARD of 64 samples, 16-bit features; and smaller ones):
   payload bytes over bytes on the wire (header, CRC, COBS and delimiter included).
2. The split of a training step's time between the link, the ring and the host, for
   the default run over the emulated microcontroller (``emu://``, link byte rate
   modelled with trio.sleep) at 115200 baud (UART) and 12 Mbit/s (USB full speed),
   with every feature sent back and with a CONFIGURE that samples only the last 4
   input steps at 12 bits. Real clock; "ring" includes the emulator's own CPU time
   (the simulated ring and its side of the protocol run in this process).
Prints a table and then JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import trio

from pgt._config import load_config
from pgt._trainer import Trainer
from pgt.backends import open_reservoir
from pgt.backends._messages import Forward, Result
from pgt.backends._wire import encode_frame, quantize_features, quantize_inputs

EXCHANGES = [  # (name, batch, inputs, features, bits)
    ("default ring, B=64, 16-bit", 64, 16, 384, 16),
    ("default ring, B=8, 16-bit", 8, 16, 384, 16),
    ("last 4 steps, B=64, 12-bit", 64, 16, 96, 12),
    ("one sample, 16 feats, 8-bit", 1, 8, 16, 8),
]


def efficiency(batch: int, n_in: int, n_feat: int, bits: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    forward = Forward(quantize_inputs(rng.uniform(-1, 1, (batch, n_in))))
    result = Result(quantize_features(rng.uniform(0, 1.2, (batch, n_feat)), bits, 2.0), bits, 2.0)
    payload = len(forward.to_payload()) + len(result.to_payload())
    wire = len(encode_frame(forward, seq=7, trial_id=42)) + len(encode_frame(result, seq=7, trial_id=42))
    return {"payload_bytes": payload, "wire_bytes": wire, "efficiency": payload / wire}


async def step_split(url: str, steps: int) -> dict:
    cfg = load_config(None, ["estimator.k=4"])
    async with open_reservoir(url, seed=cfg.seed) as reservoir:
        trainer = Trainer(cfg, reservoir)
        rows = [await trainer.train_step() for _ in range(steps)]
    split = {k: float(np.mean([r[f"time_{k}_s"] for r in rows])) for k in ("link", "ring", "host")}
    total = sum(split.values())
    return {"step_s": total, **{f"{k}_s": v for k, v in split.items()},
            **{f"{k}_share": v / total for k, v in split.items()},
            "features": reservoir.info.n_features}


async def main_async(steps: int) -> dict:
    out = {"efficiency": {name: efficiency(*shape) for name, *shape in EXCHANGES}, "split": {}}
    for baud, label in ((115200, "115200 baud"), (12e6, "12 Mbit/s")):
        for sampling, tag in (("", "all features"), ("&sample_steps=12-15&bits=12", "last 4 steps, 12-bit")):
            url = f"emu://?baud={int(baud)}&latency_ms=1&round_trip_us=2{sampling}"
            out["split"][f"{label}, {tag}"] = await step_split(url, steps)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1, help="training steps per measurement")
    args = parser.parse_args()
    out = trio.run(main_async, args.steps)
    print(f"{'exchange':32s} {'payload':>8s} {'wire':>8s} {'efficiency':>10s}")
    for name, e in out["efficiency"].items():
        print(f"{name:32s} {e['payload_bytes']:8d} {e['wire_bytes']:8d} {e['efficiency']:10.4f}")
    print()
    print(f"{'link, sampling':36s} {'feats':>5s} {'step s':>8s} {'link':>7s} {'ring':>7s} {'host':>7s}")
    for name, s in out["split"].items():
        print(f"{name:36s} {s['features']:5d} {s['step_s']:8.3f} {s['link_share']:7.1%} "
              f"{s['ring_share']:7.1%} {s['host_share']:7.1%}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
