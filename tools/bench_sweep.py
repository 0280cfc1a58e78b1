"""Wall time of an 8-trial grid by ``pgt sweep`` against the same 8 runs one after another.

    python tools/bench_sweep.py [--steps 1500] [--out DIR] [--max-concurrent N]

The grid is 4 learning rates × 2 values of K on the default job (``interface`` on the
digits, ``--steps`` steps). ``pgt sweep`` runs it on Ray in-process on this machine's
cores; then each of the 8 configurations runs as its own ``pgt train``, one after
another. Prints both wall times and their ratio, whether the two give the same test
accuracy run for run (same seeds: they must), and the sweep's table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LRS = (0.003, 0.01, 0.03, 0.1)
KS = (4, 8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--out", default=None, help="folder of both (default: a temporary one)")
    parser.add_argument("--max-concurrent", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="pgt-bench-sweep-"))
    out.mkdir(parents=True, exist_ok=True)
    spec = out / "grid.toml"
    spec.write_text(f"[base]\ntrain.steps = {args.steps}\ntrain.eval_every = 100\n\n[grid]\n"
                    f"\"optimizer.lr\" = {list(LRS)}\n\"estimator.k\" = {list(KS)}\n")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}

    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pgt", "sweep", str(spec), "--out", str(out / "sweep"),
                    "--quiet", *(["--max-concurrent", str(args.max_concurrent)]
                                 if args.max_concurrent else [])], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    swept = time.perf_counter() - start

    start = time.perf_counter()
    sequential = {}
    for lr in LRS:
        for k in KS:
            name = f"lr{lr:g}-k{k}"
            subprocess.run([sys.executable, "-m", "pgt", "train", "--quiet", "--run-dir",
                            str(out / "one-by-one"), "--name", name, "--set",
                            f"train.steps={args.steps}", "--set", "train.eval_every=100",
                            "--set", f"optimizer.lr={lr}", "--set", f"estimator.k={k}"],
                           check=True, env=env, stdout=subprocess.DEVNULL)
            events = [json.loads(line) for line in
                      (out / "one-by-one" / name / "events.jsonl").read_text().splitlines()]
            sequential[name] = [e for e in events if e.get("event") == "eval"][-1]["test_accuracy"]
    one_by_one = time.perf_counter() - start

    rows = {r["trial"]: r for r in csv.DictReader((out / "sweep" / "sweep.csv").open())}
    same = all(float(rows[name]["final_test_accuracy"]) == acc for name, acc in sequential.items())
    print(f"| how | wall s | runs | cores |\n|---|---|---|---|\n"
          f"| pgt sweep (Ray in-process) | {swept:.0f} | 8 | {os.cpu_count()} |\n"
          f"| pgt train, one after another | {one_by_one:.0f} | 8 | 1 at a time |\n")
    print(f"speed-up {one_by_one / swept:.2f}x; same test accuracy run for run: "
          f"{'yes' if same else 'NO'}\n")
    print((out / "sweep" / "sweep.md").read_text())
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
