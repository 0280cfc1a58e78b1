"""Short-term memory and parity-check capacity of the simulated ring, beside the
published real rings, and memory against loop gain and against noise.

    python tools/ring_memory.py [--json FILE] [--plot FILE.png] [--seeds N]

Standard measures (kernels._memory): i.i.d. inputs, a washout, linear readouts of the
features of one round trip fitted on one half and scored on the held-out half. The
table gives both capacities (mean and range over input sequences) for the default
ring, a few operating points and the ``memory`` preset; the figure draws memory
capacity against gain (default ring and preset) and against detector noise
(multiplicative, and the additive floor as a fraction of the features' RMS).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from pgt.kernels import RingParams, ring_forward
from pgt.kernels._memory import memory_capacity, parity_capacity

POINTS = [
    ("default", RingParams()),
    ("gain 0.5", RingParams(gain=0.5)),
    ("gain 0.95", RingParams(gain=0.95)),
    ("carrier bias 0.2", RingParams(bias=0.2)),
    ("bias 0.2, gain 0.9, p_sat 3, nu 0.5", RingParams(bias=0.2, gain=0.9, p_sat=3.0, nu=0.5)),
    ("default + reference line (ref 1)", RingParams(ref=1.0)),
    ("preset=memory", RingParams.preset("memory")),
    ("preset=memory, 1 % detector noise", RingParams.preset("memory", noise=0.01)),
]
GAINS = (0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)
NOISES = (0.0, 0.003, 0.01, 0.03, 0.1)


def _rms(params: RingParams) -> float:
    u = np.random.default_rng(0).uniform(-1, 1, (1, 2000))
    return float(np.sqrt((ring_forward(params, u) ** 2).mean()))


def _mean(fn, params, seeds) -> list[float]:
    return [fn(params, seed=s) for s in range(seeds)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--plot", default="ring_memory.png", help="the figure (PNG)")
    parser.add_argument("--seeds", type=int, default=3, help="input sequences per figure")
    args = parser.parse_args(argv)
    rows = []
    print("| ring | memory capacity, mean (min-max) | parity-check capacity, mean (min-max) |")
    print("|---|---|---|")
    for label, params in POINTS:
        mc, pc = _mean(memory_capacity, params, args.seeds), _mean(parity_capacity, params, args.seeds)
        rows.append({"ring": label, "memory": mc, "parity": pc})
        print(f"| {label} | {np.mean(mc):.2f} ({min(mc):.2f}-{max(mc):.2f}) | "
              f"{np.mean(pc):.2f} ({min(pc):.2f}-{max(pc):.2f}) |")
    print("| published real rings (Watt, Kostylev & Ustinov 2021 and later) | 4.7-5.5 | 1.5-1.7 |")
    curves = {"gain": GAINS, "noise": NOISES}
    for name, make in (("default", RingParams), ("memory", lambda **kw: RingParams.preset("memory", **kw))):
        curves[f"{name} vs gain"] = [float(np.mean(_mean(memory_capacity, make(gain=g), args.seeds)))
                                     for g in GAINS]
        rms = _rms(make())
        curves[f"{name} vs multiplicative noise"] = [
            float(np.mean(_mean(memory_capacity, make(noise=n), args.seeds))) for n in NOISES]
        curves[f"{name} vs additive floor"] = [
            float(np.mean(_mean(memory_capacity, make(floor=n * rms), args.seeds))) for n in NOISES]
    print("\n| gain | " + " | ".join(f"{g}" for g in GAINS) + " |")
    print("|---|" + "---|" * len(GAINS))
    for name in ("default", "memory"):
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in curves[f"{name} vs gain"]) + " |")
    print("\n| noise (relative; floor: of the features' RMS) | " + " | ".join(f"{n}" for n in NOISES) + " |")
    print("|---|" + "---|" * len(NOISES))
    for name in ("default", "memory"):
        for kind in ("multiplicative noise", "additive floor"):
            print(f"| {name}, {kind} | " + " | ".join(f"{v:.2f}" for v in curves[f"{name} vs {kind}"]) + " |")
    _plot(curves, args.plot)
    print(f"\nfigure: {args.plot}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"points": rows, "curves": curves}, fh, indent=1)
    return 0


def _plot(curves: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (gain_ax, noise_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, style in (("default", "o-"), ("memory", "s-")):
        gain_ax.plot(curves["gain"], curves[f"{name} vs gain"], style, label=f"{name} ring")
        noise_ax.plot(curves["noise"][1:], curves[f"{name} vs multiplicative noise"][1:], style,
                      label=f"{name}, multiplicative")
        noise_ax.plot(curves["noise"][1:], curves[f"{name} vs additive floor"][1:],
                      style[0] + "--", label=f"{name}, additive floor")
    for ax in (gain_ax, noise_ax):
        ax.axhspan(4.7, 5.5, color="grey", alpha=0.15, label="real rings, 4.7-5.5")
        ax.set_ylabel("short-term memory capacity")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    gain_ax.set_xlabel("loop gain g0")
    noise_ax.set_xlabel("noise (relative; floor as a fraction of the features' RMS)")
    noise_ax.set_xscale("log")
    fig.suptitle("Memory of the simulated ring: against gain and against detector noise")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
