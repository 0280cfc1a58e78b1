"""One step's probes as trials on a device pool, the host's work overlapping the rings'.

With a pool, each probe (one perturbed pass over the batch) is its own forward on
some device. The probes of a central difference, (k, +) and (k, −), form one trial:
both run on the same device, one after the other, so a device's own offset or
gain cancels in L₊ − L₋ and the pair sees the same drift. With noise-free devices
that agree, which device served a trial does not change a bit of the estimate:
every trial's inputs and arithmetic are the same whichever device runs it, and the
losses land in probe order. One-sided forms compare every probe with the clean pass,
which may run on another device; use the central form on devices that differ.

``prepare`` (the layers before the ring) runs up to ``prefetch`` trials per device
ahead of the devices; ``finish`` (the layers after it, the loss) runs
as each result arrives, so both overlap the devices' work. The digital layers are
NumPy and short (tens of microseconds a probe for the default model), so they run
on the loop itself: in a thread they would hold the interpreter lock against the
loop that feeds the devices, which costs the devices more than it saves.

What would otherwise wait for the step's end, when every device is idle, is done
during the step: ``finish`` hands the losses that have landed to the estimator's
``tell_early`` (``pgt`` sums each chunk of directions as soon as its pairs are in),
and the next step's parameter directions are generated in a worker thread (NumPy
releases the lock for most of that work) once every device has its first trials.
"""

from __future__ import annotations

import numpy as np
import trio

from pgt._estimators import INPUT_STREAM, INPUTS, NONE, PARAM_STREAM, PARAMS
from pgt._model import DenseRingModel

__all__ = ["evaluate_pooled", "prefetch_directions", "probe_groups"]


def probe_groups(probes) -> list[list[int]]:
    """Probe indices that must share a device: each ± pair together, the rest alone."""
    by_direction: dict[tuple, list[int]] = {}
    groups: list[list[int]] = []
    for i, probe in enumerate(probes):
        if probe.target == NONE or probe.sign == 0:
            groups.append([i])
            continue
        key = (probe.target, probe.k)
        if key in by_direction and len(by_direction[key]) == 1:
            by_direction[key].append(i)
        else:
            by_direction[key] = [i]
            groups.append(by_direction[key])
    return groups


_PLANS: dict[int, tuple] = {}


def _plan(probes) -> tuple[list[list[int]], dict[int, list[int]]]:
    """The trials of a step's probes (``probe_groups``) and, per direction stream, the
    k's in the order the prepares will ask for them. Kept for an estimator's probes
    that are the same tuple every step (the usual case), since the step waits for it."""
    kept = _PLANS.get(id(probes))
    if kept is not None and kept[0] is probes:
        return kept[1]
    groups = probe_groups(probes)
    order = [probes[i] for group in groups for i in group]
    upcoming = {stream: [p.k for p in order if p.target == target]
                for target, stream in ((PARAMS, PARAM_STREAM), (INPUTS, INPUT_STREAM))}
    if isinstance(probes, tuple):
        if len(_PLANS) > 16:
            _PLANS.clear()
        _PLANS[id(probes)] = probes, (groups, upcoming)
    return groups, upcoming


async def evaluate_pooled(trainer, probes, x, y, sigma, step):
    """The step's per-sample losses (and its clean pass) with one trial per group."""
    from pgt._trainer import _Evaluation   # the trainer imports this module lazily

    groups, upcoming = _plan(probes)
    losses = np.zeros((len(probes), len(x)))   # filled as the trials land (ev.done)
    thetas: dict[int, np.ndarray] = {}
    inputs: dict[int, np.ndarray] = {}
    ev = _Evaluation(losses, len(x), trainer.reservoir.info.n_inputs, trainer.model.layout.dim,
                     trainer.model, trainer.reservoir, trainer.params, x, y,
                     done=np.zeros(len(probes), dtype=bool))

    # The first prepare of a step makes one trial for every device in one pass (each
    # probe's inputs are computed alone, row by row, whatever the batch), and the pool
    # hands them out together: every device starts soon after the step does, rather
    # than one prepare after another. Later prepares make two trials at a time.
    first = max(1, len(getattr(trainer.reservoir, "devices", ())))

    def prepare(g: int) -> list[list[np.ndarray]]:
        batch = groups[g : g + (first if g == 0 else 2)]
        rows = [i for group in batch for i in group]
        th, u = trainer._probe_inputs([probes[i] for i in rows], x, sigma, step, upcoming)
        trials, start = [], 0
        for h, group in enumerate(batch, start=g):
            thetas[h], inputs[h] = th[start : start + len(group)], u[start : start + len(group)]
            trials.append(list(inputs[h]))
            start += len(group)
        if g + len(batch) >= min(len(groups), 2 * first):
            fed.set()
        return trials

    # The dense model's layers after the ring work probe by probe (a matrix product
    # per probe, reductions along each sample's classes), so one pass over several
    # trials gives each probe the bits it gets alone; other models finish trial by trial.
    together = isinstance(trainer.model, DenseRingModel)

    def finish(items: list[tuple[int, list[np.ndarray]]]) -> None:
        if not together and len(items) > 1:
            for item in items:
                finish([item])
            return
        features = [f for _, group_features in items for f in group_features]
        shape = features[0].shape
        if any(f.shape != shape for f in features):
            np.stack(features)   # raises, naming the shapes
        th = thetas.pop(items[0][0]) if len(items) == 1 else np.concatenate(
            [thetas.pop(g) for g, _ in items])
        if together:   # stacked and divided by the feature scale in one pass
            scaled = np.empty((len(features),) + shape,
                              dtype=np.result_type(*features, trainer.model.feature_scale))
            for j, f in enumerate(features):
                np.divide(f, trainer.model.feature_scale, out=scaled[j])
            group_losses, probs = trainer.model.post_scaled(th, scaled, y)
        else:
            group_losses, probs = trainer.model.post(th, np.stack(features), y)
        j = 0
        for g, _ in items:
            u = inputs.pop(g)
            for row, i in enumerate(groups[g]):
                losses[i] = group_losses[j]
                ev.done[i] = True
                if probes[i].target == NONE and ev.u is None:
                    ev.u, ev.feats, ev.probs = u[row], np.asarray(features[j]), probs[j]
                j += 1
        trainer.estimator.tell_early(trainer.est_state, step, probes, ev)

    async def prefetch() -> None:
        # Not before every device has its first two trials: the thread would slow the
        # step's first prepares, which every device waits for. Not much later either,
        # or a large K's directions are not ready when the next step asks for them.
        await fed.wait()
        await prefetch_directions(trainer.estimator, trainer.est_state, step + 1,
                                  trainer.model.layout.dim)

    fed = trio.Event()
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(prefetch)
        await trainer.reservoir.map_trials(len(groups), prepare_many=prepare,
                                            finish_many=finish)
        nursery.cancel_scope.cancel()   # a chunk still in its thread finishes there, unused
    trainer._ring_wait_s += trio.current_time() - t0
    trainer.ring_evals += len(probes) * len(x)
    return ev


# Rows per call in the thread: each NumPy call in it takes the interpreter lock back from
# the loop, so fewer, larger calls cost the loop less; and small enough that a short
# step still gets most of its rows ready before it starts.
_PREFETCH = 32


async def prefetch_directions(estimator, state, step: int, dim: int) -> None:
    """Generate the parameter directions ``step`` will ask for, in a worker thread.

    Run while the step before it waits on the devices: the host's loop stays free to
    feed them, the generation uses another core, and the next step's first trials
    start without it. Only a cache: δ_k is a pure function of (seed, step, k), and a
    row the step needs before it is here is generated where it is needed.
    """
    ks = list(dict.fromkeys(p.k for p in estimator.ask(state, step) if p.target == PARAMS))
    for start in range(0, len(ks), _PREFETCH):
        chunk = ks[start : start + _PREFETCH]
        if estimator.remembered(step, chunk, dim, PARAM_STREAM):
            continue
        if not estimator.has_room(dim, len(chunk)):
            return   # too large to keep: the step generates its rows where it needs them
        block = await trio.to_thread.run_sync(estimator.generate, step, chunk, dim, PARAM_STREAM,
                                              abandon_on_cancel=True)
        estimator.remember(step, chunk, dim, PARAM_STREAM, block)
