"""Accuracy against the noise a real detector makes and the drift a real ring has.

    python tools/bench_noise.py [--seeds 0 1 2] [--jobs 2] [--json FILE] [--plot FILE.png]

The default job's model and data (digits) on the default ring and on the ``memory``
preset, trained by ``interface``, ``pgt`` and ``backprop`` under:

- an additive detector noise floor of 1 %, 3 % and 10 % of the features' RMS (the RMS
  of the ring's readings of inputs tanh(N(0, 1)), measured here for each ring);
- a slow 1/f-like gain walk of 2 % and 5 % (relative standard deviation), on a
  per-sample clock, so that the probes of a step, run one after another, see the gain
  move between them;

beside the clean ring. Test accuracy of the best-validation parameters (the last
column of the JSON also keeps the final ones); ``pgt`` gets 2000 steps (K = 16,
σ = 0.01, lr 0.006), the others 1500.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

RINGS = {"default": "sim://ring?", "memory": "sim://ring?preset=memory&"}
FLOORS = (0.01, 0.03, 0.1)
WALKS = (0.02, 0.05)
ESTIMATORS = {
    "interface": (["estimator.name=interface"], 1500),
    "pgt": (["estimator.name=pgt", "estimator.k=16", "estimator.sigma=0.01",
             "optimizer.lr=0.006"], 2000),
    "backprop": (["estimator.name=backprop"], 1500),
}


def feature_rms(preset: str) -> float:
    from pgt.kernels import RingParams, ring_forward

    u = np.tanh(np.random.default_rng(0).normal(size=(500, 16)))
    return float(np.sqrt((ring_forward(RingParams.preset(preset), u) ** 2).mean()))


def conditions(ring: str) -> dict[str, str]:
    rms = feature_rms(ring)
    out = {"clean": ""}
    out.update({f"floor {100 * f:g} % of RMS": f"floor={f * rms:.6g}" for f in FLOORS})
    out.update({f"gain walk {100 * w:g} %, per-sample clock": f"walk={w}&clock=sample"
                for w in WALKS})
    return out


def _jobs(seeds) -> list[dict]:
    jobs = []
    for ring, base in RINGS.items():
        for condition, query in conditions(ring).items():
            for name, (over, steps) in ESTIMATORS.items():
                jobs += [{"section": "noise", "ring": ring, "condition": condition, "device": ring,
                          "method": name, "url": (base + query).rstrip("?&"), "overrides": over,
                          "seed": s, "steps": steps} for s in seeds]
    return sorted(jobs, key=lambda j: -j["steps"] * (16 if j["method"] == "pgt" else 1))


def tables(results: list[dict]) -> str:
    out = []
    for ring in RINGS:
        conds = list(conditions(ring))
        out += [f"**{ring} ring** — test accuracy %, best-validation parameters, mean (min–max) "
                "over seeds", "", "| condition | " + " | ".join(ESTIMATORS) + " |",
                "|---|" + "---|" * len(ESTIMATORS)]
        for cond in conds:
            cells = []
            for name in ESTIMATORS:
                acc = [100 * r["test_accuracy"] for r in results
                       if r["ring"] == ring and r["condition"] == cond and r["method"] == name]
                cells.append(f"{np.mean(acc):.1f} ({min(acc):.1f}–{max(acc):.1f})" if acc else "—")
            out.append(f"| {cond} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(RINGS), figsize=(12, 4.4), sharey=True)
    for ax, ring in zip(axes, RINGS):
        conds = list(conditions(ring))
        for name in ESTIMATORS:
            means = [np.mean([100 * r["test_accuracy"] for r in results if r["ring"] == ring
                              and r["condition"] == c and r["method"] == name]) for c in conds]
            ax.plot(range(len(conds)), means, "o-", label=name)
        ax.set_xticks(range(len(conds)))
        ax.set_xticklabels([c.replace(" of RMS", "").replace(", per-sample clock", "")
                            for c in conds], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{ring} ring")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("test accuracy %, best validation, mean of seeds")
    axes[0].legend(fontsize=8)
    fig.suptitle("Digits through a noisy, drifting simulated ring")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    from baselines import run_all
    from bench_twin import _run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="multiply every run's steps (smoke tests)")
    parser.add_argument("--json", help="write every run's results to this file")
    parser.add_argument("--plot", default="noise.png", help="the figure (PNG)")
    args = parser.parse_args(argv)
    jobs = _jobs(args.seeds)
    for job in jobs:
        job["steps"] = max(2, int(job["steps"] * args.steps_scale))
    start = time.perf_counter()
    results = run_all(_run, jobs, args.jobs)
    print(tables(results))
    plot(results, args.plot)
    print(f"figure: {args.plot}; {len(jobs)} runs, {(time.perf_counter() - start) / 60:.1f} min "
          f"on {args.jobs} worker(s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
