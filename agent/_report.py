"""``pgt report``: every estimator on both models over three seeds, and the memory
contrast, as a markdown table and PNG curves in one folder.

Each run is an ordinary run directory under ``OUT/runs/`` (config.toml,
events.jsonl, a final checkpoint), trained by ``run_training``; the table and the
plots are read back from their events, so ``pgt plot``, ``pgt logs`` and
``pgt eval`` work on every run of a report. A run already finished in OUT is
reused and an unfinished one resumed, so an interrupted report continues.

Sections (steps and hyperparameters per estimator are in PLAN; the learning
rates and K were tuned per estimator on seed 0, as any fair comparison does):
  dense        the dense model on "digits" (64 pixels -> 16 ring inputs)
  transformer  the transformer on "digit_rows" (8 row tokens, 2 ring inputs each)
  memory       the transformer on "delayed_parity", ring vs the memoryless ring
               (gain 0) vs the identity reservoir
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pgt._plot import figure, read_curves, save

__all__ = ["Job", "PLAN", "run_report"]

ESTIMATOR_ORDER = ("backprop", "twin", "interface", "pgt", "spsa", "ridge", "readout")


@dataclass(frozen=True)
class Job:
    """One configuration of the report, run once per seed."""

    section: str
    label: str                      # row name in its section's table and plot
    url: str
    overrides: tuple[str, ...]
    steps: int
    eval_every: int
    cost: float = 1.0               # relative seconds per step, to schedule longest first


_DENSE = ("model.name=dense", "data.name=digits")
_TRANS = ("model.name=transformer", "data.name=digit_rows", "optimizer.lr=0.003")
_MEMORY = ("model.name=transformer", "data.name=delayed_parity", "model.pool=last",
           "optimizer.lr=0.003")
_PGT = ("estimator.name=pgt", "estimator.k=16", "estimator.sigma=0.01")
_SPSA = ("estimator.name=spsa", "estimator.sigma=0.01", "estimator.spsa_a=1000",
         "optimizer.schedule=constant")

PLAN: tuple[Job, ...] = (
    Job("dense", "backprop", "sim://ring", (*_DENSE, "estimator.name=backprop"), 1500, 50, 1),
    Job("dense", "twin", "sim://ring", (*_DENSE, "estimator.name=twin"), 1500, 50, 3),
    Job("dense", "interface", "sim://ring", (*_DENSE, "estimator.name=interface"), 1500, 50, 1.2),
    Job("dense", "pgt", "sim://ring", (*_DENSE, *_PGT, "optimizer.lr=0.006"), 3000, 150, 4),
    Job("dense", "spsa", "sim://ring", (*_DENSE, *_SPSA, "optimizer.lr=0.003"), 6000, 300, 0.3),
    Job("dense", "ridge", "sim://ring", (*_DENSE, "estimator.name=ridge"), 1, 1, 0.01),
    Job("dense", "readout", "sim://ring", (*_DENSE, "estimator.name=readout"), 1500, 50, 0.4),
    Job("transformer", "backprop", "sim://ring", (*_TRANS, "estimator.name=backprop"), 1500, 50, 3.5),
    Job("transformer", "twin", "sim://ring", (*_TRANS, "estimator.name=twin"), 1500, 50, 5),
    Job("transformer", "interface", "sim://ring",
        (*_TRANS, "estimator.name=interface", "estimator.k=8"), 1500, 50, 6),
    Job("transformer", "pgt", "sim://ring", (*_TRANS, *_PGT), 1200, 100, 9),
    Job("transformer", "spsa", "sim://ring", (*_TRANS, *_SPSA, "optimizer.lr=0.0005"), 4000, 200, 0.8),
    Job("transformer", "ridge", "sim://ring", (*_TRANS, "estimator.name=ridge"), 1, 1, 0.01),
    Job("transformer", "readout", "sim://ring", (*_TRANS, "estimator.name=readout"), 1500, 50, 1.2),
    *(Job("memory", f"{est} · {name}", url, (*_MEMORY, f"estimator.name={est}"), 800, 40,
          cost * (3 if est == "interface" else 1))
      for est in ("ridge", "readout", "interface")
      for name, url, cost in (("ring", "sim://ring", 1.5),
                              ("memoryless ring (gain 0)", "sim://ring?gain=0", 1.5),
                              ("identity", "sim://identity", 1.0))),
)

TITLES = {
    "dense": "Dense model on digits (64 -> 16 ring inputs -> 10)",
    "transformer": "Transformer with the ring as a layer, digits as 8 row tokens",
    "memory": "Memory task: delayed parity (XOR of 2 bits, 2 steps before the end, 16 bits), transformer",
}


def _quick(job: Job) -> Job:
    """A smoke-test version: a few steps, a small ring and a small transformer."""
    small = ("model.d_model=8", "model.mlp_width=8", "data.batch_size=8", "estimator.k=2")
    url = job.url
    if url.startswith("sim://ring"):
        url += ("&" if "?" in url else "?") + "nodes=4"
    return Job(job.section, job.label, url, (*job.overrides, *small), 4, 2, job.cost)


def _run_name(job: Job, seed: int) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in job.label).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    return f"{job.section}-{slug}-s{seed}"


def _trial(job: Job, seed: int, runs: Path):
    """One (job, seed) of the plan as a sweep trial: an ordinary run in runs/<name>."""
    from pgt._sweep import Trial

    name = _run_name(job, seed)
    return Trial(name, (), overrides=(
        *job.overrides, f"seed={seed}", f"train.steps={job.steps}",
        f"train.eval_every={job.eval_every}", "train.checkpoint_every=0",
        "train.keep_checkpoints=1", f"reservoir.url={job.url}", f"run_dir={runs}",
        f"run_name={name}"))


def _run_one(args: tuple[Job, int, str]) -> dict[str, Any]:
    """Train one (job, seed) into OUT/runs/<name>; reuse or resume what is there."""
    from pgt._sweep import train_or_resume

    job, seed, runs = args
    trial = _trial(job, seed, Path(runs))
    run_dir = Path(runs) / trial.name
    how = train_or_resume(trial.config(), run_dir, signals=False)
    return _outcome(run_dir, how)


def _outcome(run_dir: Path, how: str) -> dict[str, Any]:
    from pgt._checkpoint import latest_checkpoint, load_checkpoint

    # The run's own training time (all its sessions), whether trained now or before.
    seconds = load_checkpoint(latest_checkpoint(run_dir))[1].get("elapsed_s", 0.0)
    return {"run_dir": str(run_dir), "seconds": seconds, "reused": how == "reused"}


def _execute(work: list[tuple[Job, int, str]], jobs: int, address: str | None = None,
             state: Path | None = None) -> tuple[list[dict[str, Any]], str]:
    """Every (job, seed): on Ray Tune (pgt sweep's engine; a cluster when ``address``
    or RAY_ADDRESS names one) when Ray is installed, else a pool of ``jobs``
    processes here; one after another when ``jobs`` is 1 and no cluster is named.
    Returns the runs' outcomes in ``work``'s order, and the engine's name."""
    from pgt._sweep import RayMissing, run_on_ray

    cluster = address or os.environ.get("RAY_ADDRESS")
    if jobs <= 1 and not cluster:
        return [_run_one(w) for w in work], "this process"
    try:
        trials = [_trial(job, seed, Path(runs)) for job, seed, runs in work]
        runs = Path(work[0][2])
        results = run_on_ray(trials, runs, state or runs.parent / "ray", name="report",
                             max_concurrent=jobs, address=address)
    except RayMissing:
        if cluster:
            raise
    else:
        failed = [name for name, r in results.items() if "error" in r]
        if failed:
            raise RuntimeError(f"report: run {failed[0]} failed: {results[failed[0]]['error']}")
        return ([_outcome(runs / t.name, results[t.name]["how"]) for t in trials],
                f"Ray Tune, {jobs} at a time")
    # One BLAS thread per worker: the workers already fill the cores, and tiny
    # matrix products slow down badly when threads oversubscribe them.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        return pool.map(_run_one, work, chunksize=1), f"{jobs} processes"


def _summarise(job: Job, runs: list[dict[str, Any]]) -> dict[str, Any]:
    curves = [read_curves(Path(r["run_dir"])) for r in runs]
    acc = np.array([100 * c["test_accuracy"][-1] for c in curves])
    chosen = np.array([100 * c["test_accuracy"][_best_index(c)] for c in curves])
    loss = np.array([c["test_loss"][-1] for c in curves])
    return {"section": job.section, "label": job.label, "url": job.url,
            "overrides": list(job.overrides), "steps": int(curves[0]["eval_step"][-1]),
            "accuracy": acc.tolist(), "best_val_accuracy": chosen.tolist(),
            "test_loss": loss.tolist(),
            "ring_evals": int(np.mean([c["eval_ring_evals"][-1] for c in curves])),   # seeds' mean
            "seconds": float(np.mean([r["seconds"] for r in runs])),
            "runs": [r["run_dir"] for r in runs], "curves": curves}


def _best_index(curves: dict[str, list]) -> int:
    """The evaluation the run keeps as checkpoints/best: highest validation accuracy,
    ties to the lower validation loss (pgt._metrics.better); the last without one."""
    if not curves.get("val_accuracy"):
        return -1
    from pgt._metrics import better

    best, index = {}, -1
    for i, (acc, loss) in enumerate(zip(curves["val_accuracy"], curves["val_loss"])):
        if better("classification", {"val_accuracy": acc, "val_loss": loss}, best):
            best, index = {"val_accuracy": acc, "val_loss": loss}, i
    return index


def _reused(results: list[dict[str, Any]]) -> str:
    n = sum(1 for r in results if r.get("reused"))
    return f" ({n} of them finished by an earlier report, reused)" if n else ""


def _fmt_evals(n: float) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"


def table(rows: list[dict[str, Any]]) -> str:
    """One section's markdown table."""
    lines = ["| run | test accuracy %, mean ± sd (per seed) | best-validation params, test % | "
             "test loss | ring evals | steps | s/run |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = np.array(r["accuracy"])
        seeds = ", ".join(f"{a:.1f}" for a in acc)
        chosen = np.array(r.get("best_val_accuracy", acc))
        lines.append(f"| {r['label']} | {acc.mean():.1f} ± {acc.std():.1f} ({seeds}) | "
                     f"{chosen.mean():.1f} ({', '.join(f'{a:.1f}' for a in chosen)}) | "
                     f"{np.mean(r['test_loss']):.3f} | {_fmt_evals(r['ring_evals'])} | "
                     f"{r['steps']} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def _plot_section(name: str, rows: list[dict[str, Any]], out: Path) -> Path:
    fig, (acc_ax, loss_ax) = figure(TITLES[name])
    for r in rows:
        x = np.array(r["curves"][0]["eval_ring_evals"])
        n = min(len(c["eval_ring_evals"]) for c in r["curves"])
        acc = np.array([c["test_accuracy"][:n] for c in r["curves"]]) * 100
        loss = np.array([c["test_loss"][:n] for c in r["curves"]])
        for ax, ys in ((acc_ax, acc), (loss_ax, loss)):
            line, = ax.plot(x[:n], ys.mean(axis=0), "o-", ms=2, label=r["label"])
            ax.fill_between(x[:n], ys.min(axis=0), ys.max(axis=0), alpha=0.15,
                            color=line.get_color())
    acc_ax.legend(fontsize=8)
    loss_ax.set_ylabel("test loss")
    return save(fig, out / f"{name}.png")


def _contrasts(by_section: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = []
    rows = {r["label"]: np.mean(r["accuracy"]) for r in by_section.get("transformer", [])}
    if "interface" in rows and "backprop" in rows:
        gap = rows["backprop"] - rows["interface"]
        lines.append(f"- transformer: interface is {abs(gap):.1f} points "
                     f"{'below' if gap > 0 else 'above'} backprop "
                     f"({rows['interface']:.1f} % vs {rows['backprop']:.1f} %); pgt "
                     f"{rows.get('pgt', float('nan')):.1f} %, readout "
                     f"{rows.get('readout', float('nan')):.1f} %")
    mem = {r["label"]: np.mean(r["accuracy"]) for r in by_section.get("memory", [])}
    for est in ("ridge", "readout", "interface"):
        ring, ident = mem.get(f"{est} · ring"), mem.get(f"{est} · identity")
        if ring is not None and ident is not None:
            lines.append(f"- memory task, {est}: ring {ring:.1f} %, memoryless ring "
                         f"{mem.get(f'{est} · memoryless ring (gain 0)', float('nan')):.1f} %, "
                         f"identity {ident:.1f} % (chance 50 %)")
    return lines


def run_report(out: Path, *, quick: bool = False, seeds: tuple[int, ...] = (0, 1, 2),
               jobs: int = 2, sections: tuple[str, ...] | None = None,
               address: str | None = None) -> dict[str, Any]:
    """Run (or reuse) every run of the plan, write report.md, results.json and PNGs."""
    out = Path(out)
    plan = [j for j in PLAN if sections is None or j.section in sections]
    if quick:
        plan = [_quick(j) for j in plan]
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    work = sorted(((j, s, str(runs)) for j in plan for s in seeds),
                  key=lambda w: -w[0].cost * w[0].steps)
    results, engine = _execute(work, jobs, address)
    by_job: dict[Job, list] = {}
    for (job, _, _), result in zip(work, results):
        by_job.setdefault(job, []).append(result)
    by_section: dict[str, list[dict[str, Any]]] = {}
    for job in plan:
        by_section.setdefault(job.section, []).append(_summarise(job, by_job[job]))
    wall = time.perf_counter() - start
    text = [f"# pgt report{' (quick)' if quick else ''}", "",
            f"Seeds {', '.join(map(str, seeds))}; {len(work)} runs"
            f"{_reused(results)} in {wall / 60:.1f} min "
            f"wall ({engine}). Accuracy is the final test accuracy; ring evals "
            "are single-sample reservoir passes during training.", ""]
    for name, rows in by_section.items():
        png = _plot_section(name, rows, out)
        text += [f"## {TITLES[name]}", "", table(rows), "", f"![{name}]({png.name})", ""]
    text += ["## Summary", "", *_contrasts(by_section), ""]
    (out / "report.md").write_text("\n".join(text), encoding="utf-8")
    summary = [{k: v for k, v in r.items() if k != "curves"}
               for rows in by_section.values() for r in rows]
    (out / "results.json").write_text(json.dumps({"wall_seconds": wall, "quick": quick,
                                                  "seeds": list(seeds), "rows": summary},
                                                 indent=1), encoding="utf-8")
    return {"wall_seconds": wall, "report": out / "report.md", "sections": by_section,
            "text": "\n".join(text)}
