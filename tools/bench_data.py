"""Own data and reservoir-computing benchmarks, through the CLI, three seeds.

    python tools/bench_data.py [--seeds 0 1 2] [--jobs 2] [--out runs/bench_data]
                               [--sections files series] [--quick] [--json FILE]

files   two classification datasets that ship with scikit-learn, exported by
        tools/export_datasets.py (wine as CSV, breast_cancer as NPZ) and trained with
        ``pgt train --data FILE`` for every estimator, beside logistic regression on
        the raw features.
series  NARMA10 and Mackey–Glass (τ = 17) one-step-ahead prediction (``data.name``
        narma10 / mackey_glass: windows of 16 past values), beside a ridge regression
        on the raw windows and a software echo-state network driven by the same
        windows (tools/baselines.py).

Seed s sets both ``seed`` and ``data.split_seed`` (a new split, or a new generated
series, per seed), so the baselines vary too. Every run selects on its validation
split (``checkpoints/best``); the tables give the test metric of those parameters
and, beside it, of the final ones. The test set chooses nothing. Finished runs in
OUT are reused, so an interrupted bench continues.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

FILES = {"wine": "wine.csv", "breast_cancer": "breast_cancer.npz"}
SERIES = ("narma10", "mackey_glass")
_PGT = ["estimator.k=16", "estimator.sigma=0.01", "optimizer.lr=0.006"]
# estimator -> extra --set overrides and steps; everything else is the default job.
PLAN = {
    "files": {"backprop": ([], 3000), "interface": ([], 3000), "pgt": (_PGT, 3000),
              "ridge": ([], 1), "readout": ([], 3000)},
    "series": {"backprop": ([], 3000), "interface": ([], 3000), "ridge": ([], 1),
               "readout": ([], 3000)},
}


def _jobs(sections, seeds, data_dir: Path, out: Path, quick: bool) -> list[dict]:
    jobs = []
    for section in sections:
        sets = FILES if section == "files" else {name: None for name in SERIES}
        for dataset, file in sets.items():
            for estimator, (overrides, steps) in PLAN[section].items():
                steps = min(steps, 20) if quick else steps
                for seed in seeds:
                    data = (["--data", str(data_dir / file)] if file else
                            ["--set", f"data.name={dataset}"])
                    argv = ["train", *data, "--run-dir", str(out),
                            "--name", f"{dataset}-{estimator}-s{seed}", "--quiet",
                            "--set", f"estimator.name={estimator}", "--set", f"seed={seed}",
                            "--set", f"data.split_seed={seed}", "--set", f"train.steps={steps}",
                            "--set", f"train.eval_every={max(steps // 30, 1)}",
                            *(a for o in overrides for a in ("--set", o))]
                    jobs.append({"section": section, "dataset": dataset, "estimator": estimator,
                                 "seed": seed, "steps": steps, "argv": argv,
                                 "run_dir": str(out / f"{dataset}-{estimator}-s{seed}"),
                                 "cost": steps * (6 if estimator == "pgt" else 1)})
    return sorted(jobs, key=lambda j: -j["cost"])   # longest first keeps the workers busy


def _run(job: dict) -> dict:
    """One ``pgt train`` (the CLI's main, in this worker); its results from the run."""
    import contextlib
    import io

    from pgt._checkpoint import latest_checkpoint, load_checkpoint
    from pgt._sweep import finished as _finished
    from pgt.cli import main

    run_dir = Path(job["run_dir"])
    start = time.perf_counter()
    if not _finished(run_dir):
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)   # a half run: start it again
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(job["argv"])
        if code:
            raise SystemExit(f"bench_data: pgt {' '.join(job['argv'])} exited {code}")
    _, meta = load_checkpoint(latest_checkpoint(run_dir))
    return {**{k: v for k, v in job.items() if k != "argv"}, "command": "pgt " + " ".join(job["argv"]),
            "final": meta["last_eval"], "best": meta["best"], "ring_evals": meta["ring_evals"],
            "seconds": time.perf_counter() - start}


def _baselines(sections, seeds, data_dir: Path) -> list[dict]:
    """Logistic / ridge regression on the raw features of each run's own split."""
    from baselines import echo_state_network, linear_ridge, logistic_regression

    from pgt._data import open_dataset
    from pgt._schema import DataConfig

    rows = []
    for section in sections:
        for dataset in (FILES if section == "files" else SERIES):
            for seed in seeds:
                cfg = (DataConfig(path=str(data_dir / FILES[dataset]), split_seed=seed)
                       if section == "files" else DataConfig(name=dataset, split_seed=seed))
                data = open_dataset(cfg)
                if section == "files":
                    rows.append({"section": section, "dataset": dataset, "seed": seed,
                                 "method": "logistic", **logistic_regression(data)})
                    continue
                rows.append({"section": section, "dataset": dataset, "seed": seed,
                             "method": "linear", **linear_ridge(data)})
                rows.append({"section": section, "dataset": dataset, "seed": seed,
                             "method": "esn", **echo_state_network(data, seed=seed)})
    return rows


def _stat(values, scale=1.0, digits=1) -> str:
    """Mean (per seed): ``digits`` decimals, or 3 significant digits when None."""
    v = np.asarray(values, dtype=float) * scale
    fmt = (lambda x: f"{x:.{digits}f}") if digits is not None else (lambda x: f"{x:.3g}")
    return f"{fmt(v.mean())} ({', '.join(fmt(x) for x in v)})"


def _evals(n: float) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def tables(results: list[dict], baselines: list[dict]) -> str:
    out = []
    for section in ("files", "series"):
        datasets = [d for d in (FILES if section == "files" else SERIES)
                    if any(r["dataset"] == d for r in results)]
        for dataset in datasets:
            rows = [r for r in results if r["dataset"] == dataset]
            if section == "files":
                out += [f"**{dataset}** (`pgt train --data data/{FILES[dataset]}`), test accuracy %, "
                        "mean (per seed)", "",
                        "| method | best-validation params | final params | ring evals | steps |",
                        "|---|---|---|---|---|"]
                key, scale, digits = "test_accuracy", 100, 1
            else:
                out += [f"**{dataset}** (`--set data.name={dataset}`), test NMSE, mean (per seed); "
                        "NRMSE = √NMSE", "",
                        "| method | NMSE, best-validation params | NRMSE (best) | NMSE, final params | ring evals | steps |",
                        "|---|---|---|---|---|---|"]
                key, scale, digits = "test_nmse", 1, None
            for estimator in PLAN[section]:
                mine = sorted((r for r in rows if r["estimator"] == estimator), key=lambda r: r["seed"])
                if not mine:
                    continue
                best = [r["best"].get(key, r["final"][key]) for r in mine]
                final = [r["final"][key] for r in mine]
                extra = (f" {_stat(np.sqrt(best), 1, None)} |" if section == "series" else "")
                out.append(f"| {estimator} | {_stat(best, scale, digits)} |{extra} "
                           f"{_stat(final, scale, digits)} | {_evals(mine[0]['ring_evals'])} | "
                           f"{mine[0]['steps']} |")
            base = sorted((b for b in baselines if b["dataset"] == dataset), key=lambda b: b["seed"])
            if base and section == "files":
                out.append(f"| logistic regression, raw features | {_stat([b['test_accuracy'] for b in base], 100, 1)} "
                           "| — | 0 | — |")
            elif base:
                for method, label in (("esn", "echo-state network, 400 tanh units, ridge readout"),
                                      ("linear", "ridge regression, raw window")):
                    nmse = [b["test_nmse"] for b in base if b["method"] == method]
                    out.append(f"| {label} | {_stat(nmse, 1, None)} | "
                               f"{_stat(np.sqrt(nmse), 1, None)} | — | 0 | — |")
            out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes")
    parser.add_argument("--out", default="runs/bench_data", help="folder of the runs")
    parser.add_argument("--data", default="data", help="folder of the exported files")
    parser.add_argument("--sections", nargs="+", default=["files", "series"],
                        choices=["files", "series"])
    parser.add_argument("--quick", action="store_true", help="20 steps a run (smoke test)")
    parser.add_argument("--json", help="write every run's results to this file")
    args = parser.parse_args(argv)
    data_dir, out = Path(args.data), Path(args.out)
    if "files" in args.sections:
        from export_datasets import export

        for name in FILES:
            export(name, data_dir)
    jobs = _jobs(args.sections, args.seeds, data_dir, out, args.quick)
    start = time.perf_counter()
    from baselines import run_all

    results = run_all(_run, jobs, args.jobs)
    baselines = _baselines(args.sections, args.seeds, data_dir)
    print(tables(results, baselines))
    print(f"{len(jobs)} runs, {(time.perf_counter() - start) / 60:.1f} min on {args.jobs} worker(s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": results, "baselines": baselines}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
