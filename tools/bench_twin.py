"""The twin estimator on rings it does not know, on the transformer, and its ablations.

    python tools/bench_twin.py [--seeds 0 1 2] [--jobs 2] [--steps 1500] [--json FILE]
                               [--sections rings transformer]

rings        three simulated rings whose gain, kappa, tap, nu and mask differ from the
             defaults, each with 3 % detector noise, and an emulated microcontroller
             (emu://) with noise and drift. On each: ``twin`` beside ``backprop`` on
             the same physics (for emu://, whose black box has no backward,
             ``backprop`` runs on sim:// with the emulator's ring parameters), and two
             ablations: ``twin`` without probes (plain physics-aware training,
             ``estimator.twin_probes = 0``) and in-silico training (a grey-box twin
             fitted on a calibration pass of the training inputs through the device,
             the network trained by backprop through the twin alone, then measured on
             the device).
transformer  the transformer with the ring as a layer: ``twin`` beside ``backprop``.

Test accuracy is that of the best-validation parameters; ring evaluations are the
device's single-sample passes during training (the in-silico row: its calibration
pass). Same seeds for every method.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

RINGS = {
    "A: gain 0.7, kappa 0.8, tap 0.15, nu 0.6": "gain=0.7&kappa=0.8&tap=0.15&nu=0.6&mask_seed=11",
    "B: gain 0.9, kappa 0.4, tap 0.3, nu 1.5": "gain=0.9&kappa=0.4&tap=0.3&nu=1.5&mask_seed=22",
    "C: gain 0.6, kappa 1.0, tap 0.1, nu 0.3": "gain=0.6&kappa=1.0&tap=0.1&nu=0.3&mask_seed=33",
}
NOISE = "noise=0.03"
EMU = "emu://?noise=0.01&drift=0.05&drift_period=500"
EMU_AS_SIM = "sim://ring?noise=0.01&drift=0.05&drift_period=500"


def _jobs(sections, seeds, steps) -> list[dict]:
    jobs = []
    if "rings" in sections:
        devices = {name: (f"sim://ring?{q}&{NOISE}", f"sim://ring?{q}&{NOISE}")
                   for name, q in RINGS.items()}
        devices["emu: noise 1 %, drift 5 %"] = (EMU, EMU_AS_SIM)
        for name, (url, sim_url) in devices.items():
            for method, over, where in (("twin", ["estimator.name=twin"], url),
                                        ("backprop", ["estimator.name=backprop"], sim_url),
                                        ("twin, no probes", ["estimator.name=twin",
                                                             "estimator.twin_probes=0"], url),
                                        ("in-silico on the twin", None, url)):
                jobs += [{"section": "rings", "device": name, "method": method, "url": where,
                          "overrides": over, "seed": s, "steps": steps} for s in seeds]
    if "transformer" in sections:
        trans = ["model.name=transformer", "data.name=digit_rows", "optimizer.lr=0.003"]
        for method in ("twin", "backprop"):
            jobs += [{"section": "transformer", "device": "sim://ring", "method": method,
                      "url": "sim://ring", "overrides": [*trans, f"estimator.name={method}"],
                      "seed": s, "steps": steps} for s in seeds]
    return jobs


def _run(job: dict) -> dict:
    import trio

    from pgt._config import load_config
    from pgt._metrics import better
    from pgt._trainer import Trainer
    from pgt.backends import open_reservoir

    start = time.perf_counter()
    if job["overrides"] is None:
        return {**job, **trio.run(_in_silico, job), "seconds": time.perf_counter() - start}

    async def train():
        cfg = load_config(None, [*job["overrides"], f"seed={job['seed']}",
                                 f"train.steps={job['steps']}"])
        best = {}
        async with open_reservoir(job["url"], seed=cfg.seed) as ring:
            trainer = Trainer(cfg, ring)
            while not trainer.done:
                await trainer.train_step()
                if trainer.step % 50 == 0 or trainer.done:
                    result = await trainer.evaluate()
                    if better("classification", result, best):
                        best = {**result, "ring_evals": trainer.ring_evals}
            return {"test_accuracy": best["test_accuracy"], "final_accuracy": result["test_accuracy"],
                    "ring_evals": trainer.ring_evals, "best_ring_evals": best["ring_evals"]}

    return {**job, **trio.run(train), "seconds": time.perf_counter() - start}


async def _in_silico(job: dict) -> dict:
    """Fit a grey-box twin on one pass of the training inputs through the device, train
    by backprop through the twin alone, then measure the parameters on the device."""
    from pgt._config import load_config
    from pgt._metrics import better
    from pgt._trainer import Trainer
    from pgt._twin import make_twin
    from pgt.backends import ReservoirInfo, open_reservoir

    common = [f"seed={job['seed']}", f"train.steps={job['steps']}"]
    cfg = load_config(None, [*common, "estimator.name=backprop"])
    seen = load_config(None, [*common, "estimator.name=readout"])   # same model, no backward
    async with open_reservoir(job["url"], seed=cfg.seed) as device:
        on_device = Trainer(seen, _NoVjp(device))
        # the calibration pass: the training inputs at the start, and as many random ones
        u = np.clip(on_device.model.pre(on_device.params, on_device.data.x_train)[0], -1, 1)
        calibration = np.concatenate([u, np.tanh(np.random.default_rng(job["seed"]).normal(
            size=u.shape))])
        feats = await on_device._ring(calibration)
        twin = make_twin("grey", u.shape[1], feats.shape[1], 0.01, 0)
        state = twin.init(calibration[:64], feats[:64])
        rng = np.random.default_rng([job["seed"], 0x51])
        for _ in range(job.get("fits", 3000)):
            pick = rng.integers(0, len(calibration), 64)
            state, _ = twin.fit(state, calibration[pick], feats[pick])

        class TwinRing:   # the twin as a differentiable reservoir
            info = ReservoirInfo(name="twin", n_inputs=u.shape[1], n_features=feats.shape[1],
                                 max_batch=65536)

            async def forward(self, x):
                return twin.forward(state, x)

            def vjp(self, x, grad):
                return twin.vjp(state, x, grad)

        trainer = Trainer(cfg, TwinRing())
        best = {}
        while not trainer.done:
            await trainer.train_step()
            if trainer.step % 50 == 0 or trainer.done:
                on_device.params = trainer.params
                result = await on_device.evaluate()   # selection on the device's validation
                if better("classification", result, best):
                    best = result
    return {"test_accuracy": best["test_accuracy"], "final_accuracy": result["test_accuracy"],
            "ring_evals": len(calibration), "best_ring_evals": len(calibration)}


class _NoVjp:
    """A device seen as the black box it is (no backward), for the in-silico ablation."""

    def __init__(self, device) -> None:
        self.device, self.info = device, device.info

    async def forward(self, u):
        return await self.device.forward(u)


def _fmt(n: float) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"


def tables(results: list[dict]) -> str:
    out = []
    for section in ("rings", "transformer"):
        rows = [r for r in results if r["section"] == section]
        if not rows:
            continue
        out += ["| device | method | test % (best validation), mean (per seed) | final % | ring evals in run | ring evals at the best |",
                "|---|---|---|---|---|---|"]
        for device in dict.fromkeys(r["device"] for r in rows):
            for method in dict.fromkeys(r["method"] for r in rows if r["device"] == device):
                mine = sorted((r for r in rows if r["device"] == device and r["method"] == method),
                              key=lambda r: r["seed"])
                acc = np.array([r["test_accuracy"] for r in mine]) * 100
                fin = np.array([r["final_accuracy"] for r in mine]) * 100
                out.append(f"| {device} | {method} | {acc.mean():.1f} ({', '.join(f'{a:.1f}' for a in acc)}) "
                           f"| {fin.mean():.1f} | {_fmt(np.mean([r['ring_evals'] for r in mine]))} | "
                           f"{_fmt(np.mean([r['best_ring_evals'] for r in mine]))} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--sections", nargs="+", default=["rings", "transformer"],
                        choices=["rings", "transformer"])
    parser.add_argument("--calibration-fits", type=int, default=3000,
                        help="Adam steps fitting the in-silico twin on its calibration pass")
    parser.add_argument("--json", help="write every run's results to this file")
    args = parser.parse_args(argv)
    jobs = [{**job, "fits": args.calibration_fits}
            for job in _jobs(args.sections, args.seeds, args.steps)]
    start = time.perf_counter()
    from baselines import run_all

    results = run_all(_run, jobs, args.jobs)
    print(tables(results))
    print(f"{len(jobs)} runs, {(time.perf_counter() - start) / 60:.1f} min on {args.jobs} worker(s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
