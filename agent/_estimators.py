"""Gradient estimators as ask/tell on explicit state.

``ask(state, step)`` names the passes an estimate needs (``Probe``s: a direction
index, a sign and what is perturbed); the agent runs them through the reservoir
and hands the per-sample losses back to ``tell(state, step, probes, evaluation)``,
which returns a flat gradient, the new state and metrics. Directions are never
stored: direction k of step s is regenerated from (seed, s, k) (kernels.directions).

| name      | perturbed                 | ring passes per step (central / one-sided) |
|-----------|---------------------------|--------------------------------------------|
| pgt       | every parameter           | 2K / K+1                                   |
| spsa      | every parameter, Spall    | 2                                          |
| interface | the ring's inputs, per sample; exact backward through the digital layers | 2K+1 / K+1 |
| readout   | nothing; layers after the ring only | 1                                |
| ridge     | nothing; a closed-form linear readout (pgt._ridge) | one pass of train + val |
| twin      | the ring's inputs, now and then; the gradient through the ring from a twin learned online (pgt._twin) | 1, +2K on probing steps |
| backprop  | nothing; exact gradient through the simulated ring | 1                 |
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pgt._schema import EstimatorConfig
from pgt.kernels import accumulate, directions

PARAMS, INPUTS, NONE = "params", "inputs", "none"
PARAM_STREAM, INPUT_STREAM = 0, 1
_MEMO_LIMIT = 1 << 22   # numbers of one step's directions kept for tell (32 MiB)
_CHUNK = 4              # kernels.accumulate's default chunk: the same summation order
_AHEAD = 8              # directions generated per call (Philox's fixed cost per call)


@dataclass(frozen=True)
class Probe:
    """One pass through the ring: θ (or u) + sign·σ·δ_k; sign 0 is the clean pass."""

    k: int
    sign: float
    target: str


class Evaluation(Protocol):
    """What the agent hands to ``tell``: per-sample losses and the clean pass.

    ``losses`` is (n_probes, B) in probe order. The clean pass (present when a
    probe with target NONE was asked) offers the exact digital derivatives.
    """

    losses: np.ndarray
    batch_size: int
    input_size: int
    dim: int
    done: np.ndarray | None     # (n_probes,) bool while losses land one by one, else None
    early: tuple | None         # what ``tell_early`` did so far, for ``tell``

    def pack(self, **grads) -> np.ndarray: ...                  # per-layer -> flat

    def post_grads(self) -> dict[str, np.ndarray]: ...          # w2, b2 and d/dfeatures
    def pre_grads(self, grad_u) -> dict[str, np.ndarray]: ...   # w1, b1 given d/du
    def ring_vjp(self, grad_feats) -> np.ndarray: ...           # simulation only


_CLEAN = (Probe(-1, 0.0, NONE),)
_SPSA_PAIR = (Probe(0, 1.0, PARAMS), Probe(0, -1.0, PARAMS))


@functools.lru_cache(maxsize=16)
def _probes(k: int, form: str, target: str) -> tuple[Probe, ...]:
    """A step's probes of ``target``, the same (immutable) tuple every step: central
    pairs (after the clean pass for INPUTS, whose backward needs it), or the clean
    pass and one probe per direction."""
    if form == "central":
        pairs = tuple(Probe(i, s, target) for i in range(k) for s in (1.0, -1.0))
        return _CLEAN + pairs if target == INPUTS else pairs
    return _CLEAN + tuple(Probe(i, 1.0, target) for i in range(k))


class Estimator:
    """Base: stateless unless a subclass needs more; sigma and lr scale per step."""

    name = "base"

    def __init__(self, cfg: EstimatorConfig, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed

    def init(self, dim: int) -> dict[str, np.ndarray]:
        return {}

    def sigma(self, step: int) -> float:
        return self.cfg.sigma

    def directions(self, step: int, ks, size: int, stream: int, ahead=()):
        """Directions δ_k of this step, exactly as ``tell`` regenerates them.

        The rows are remembered for this step (up to ``_MEMO_LIMIT`` numbers), so
        ``tell`` sums them instead of generating them again at the end of the step,
        where every device would wait for it, and a k asked twice (the two probes of a
        central difference) is generated once. ``ahead``: the k's the step will ask for
        next, in order; a call that must generate anyway generates up to ``_AHEAD`` rows
        of them too, since one call's fixed cost is most of a row's. Bit-identical
        either way: δ_k depends only on (seed, step, k).
        """
        memo = self._memo_from(step)
        rows = memo.setdefault(step, {}).setdefault((stream, size), {})
        ks = [int(k) for k in ks]
        missing = [k for k in dict.fromkeys(ks) if k not in rows]
        if missing:
            room = self._room(size)
            if room < len(missing):   # not remembered: generate exactly what was asked
                return directions(self.seed, step, ks, size, self.distribution, stream=stream)
            wanted = set(missing)
            extra = [k for k in dict.fromkeys(int(k) for k in ahead) if k not in rows and k not in wanted]
            self._generate(step, stream, size, rows,
                           missing + extra[: max(0, min(room, _AHEAD) - len(missing))])
        if len(ks) == 1:
            return rows[ks[0]][None]
        block = np.empty((len(ks), size))
        for i, k in enumerate(ks):
            block[i] = rows[k]
        return block

    def _memo_from(self, step: int) -> dict:
        """The memo {step: {(stream, size): {k: row}}}, forgetting the steps before ``step``."""
        memo = self.__dict__.setdefault("_memo", {})
        for old in [s for s in memo if s < step]:
            del memo[old]
        return memo

    def _room(self, size: int) -> int:
        used = sum(len(rows) * n for by_key in self.__dict__["_memo"].values()
                   for (_, n), rows in by_key.items())
        return (_MEMO_LIMIT - used) // size

    def _generate(self, step, stream, size, rows, ks) -> None:
        for start in range(0, len(ks), _AHEAD):
            chunk = ks[start : start + _AHEAD]
            rows.update(zip(chunk, self.generate(step, chunk, size, stream)))

    def generate(self, step: int, ks, size: int, stream: int) -> np.ndarray:
        """δ_k for every k in ``ks``, (len(ks), size): a pure function, safe in a thread."""
        return directions(self.seed, step, ks, size, self.distribution, stream=stream)

    def remember(self, step: int, ks, size: int, stream: int, block: np.ndarray) -> None:
        """Keep rows generated ahead of time (``generate``, often for the next step) for
        ``directions`` and ``accumulate``, where there is room; rows already kept stay."""
        if self.has_room(size, len(ks)):
            rows = self.__dict__["_memo"].setdefault(step, {}).setdefault((stream, size), {})
            for k, row in zip(ks, block):
                rows.setdefault(int(k), row)

    def has_room(self, size: int, n: int) -> bool:
        """Whether ``n`` more rows of ``size`` numbers fit in the memo."""
        self.__dict__.setdefault("_memo", {})
        return self._room(size) >= n

    def _kept(self, step: int, size: int, stream: int) -> dict:
        """This step's remembered rows of ``stream`` and ``size``, {k: row} (may be empty)."""
        return self.__dict__.get("_memo", {}).get(step, {}).get((stream, size), {})

    def remembered(self, step: int, ks, size: int, stream: int) -> bool:
        rows = self._kept(step, size, stream)
        return all(int(k) in rows for k in ks)

    def accumulate(self, step: int, coeffs, size: int, stream: int, *, first: int = 0,
                   total=None):
        """Σ_k coeffs[k] δ_k (kernels.accumulate, also its ``first`` and ``total``),
        from this step's remembered rows if any."""
        rows = self._kept(step, size, stream)
        if not all(k in rows for k in range(first, first + len(coeffs))):
            rows = None   # not all remembered: regenerate, to the same bits
        return accumulate(self.seed, step, coeffs, size, self.distribution, stream=stream,
                          chunk=_CHUNK, rows=rows, first=first, total=total)

    @property
    def distribution(self) -> str:
        return self.cfg.distribution

    def lr_scale(self, step: int) -> float:
        return 1.0

    def ask(self, state, step: int) -> list[Probe]:
        raise NotImplementedError

    def tell(self, state, step, probes, ev: Evaluation):
        raise NotImplementedError

    def tell_early(self, state, step, probes, ev: Evaluation) -> None:
        """Do now the part of ``tell`` that the losses in so far allow.

        Called, where the agent gathers a step's probes one by one (a device pool), each
        time more losses land: ``ev.done`` marks the probes whose losses are in. What is
        done is kept in ``ev.early`` and ``tell`` goes on from it, so the step's end,
        where every device waits for ``tell``, has little left. The estimate is the
        same to the bit. The base estimator leaves it all to ``tell``.
        """


def _difference_coeffs(losses: np.ndarray, probes: list[Probe], sigma: float, form: str) -> np.ndarray:
    """Per-direction, per-sample coefficients (K, B) of the finite-difference estimate."""
    if form == "central":
        plus, minus = losses[0::2], losses[1::2]
        return (plus - minus) / (2.0 * sigma)
    return (losses[1:] - losses[0]) / sigma


class PGT(Estimator):
    """The paper's form: every parameter perturbed; ĝ = mean_k ΔL_k δ_k / σ."""

    name = "pgt"

    def ask(self, state, step):
        return _probes(self.cfg.k, self.cfg.form, PARAMS)

    def _coeffs(self, losses, probes, step, first: int = 0, stop: int | None = None) -> np.ndarray:
        """mean_b ΔL_kb / σ / K for k in [first, stop): each from its own rows only, so
        that a part is the same to the bit as the same k's of the whole."""
        k = self.cfg.k
        stop = k if stop is None else stop
        if self.cfg.form == "central":
            part = losses[2 * first : 2 * stop]
        else:
            part = np.concatenate([losses[:1], losses[1 + first : 1 + stop]])
        coeffs = _difference_coeffs(part, probes, self.sigma(step), self.cfg.form).mean(axis=1)
        return coeffs / k

    def tell(self, state, step, probes, ev):
        first, total = ev.early or (0, None)
        coeffs = self._coeffs(ev.losses, probes, step)
        grad = self.accumulate(step, coeffs[first:], ev.dim, PARAM_STREAM, first=first, total=total)
        return grad, state, {"grad_norm": float(np.linalg.norm(grad))}

    def _landed(self, done, first: int, stop: int) -> bool:
        """Whether the losses of directions [first, stop) are all in."""
        if self.cfg.form == "central":
            return bool(done[2 * first : 2 * stop].all())
        return bool(done[0] and done[1 + first : 1 + stop].all())

    def tell_early(self, state, step, probes, ev):
        """Sum the directions whose pairs are in, whole chunks in order, as ``tell`` would.

        Each coefficient comes from its own probes' losses by the same operations as
        in ``tell``, so every summed chunk is ``tell``'s to the bit.
        """
        first, total = ev.early or (0, None)
        stop = first   # through whole chunks in order, as far as they have all landed
        while stop < self.cfg.k and self._landed(ev.done, stop, min(stop + _CHUNK, self.cfg.k)):
            stop = min(stop + _CHUNK, self.cfg.k)
        if stop == first or not self.remembered(step, range(first, stop), ev.dim, PARAM_STREAM):
            return
        coeffs = self._coeffs(ev.losses, probes, step, first, stop)
        ev.early = stop, self.accumulate(step, coeffs, ev.dim, PARAM_STREAM, first=first,
                                          total=total)


class SPSA(PGT):
    """Spall's SPSA: one Rademacher pair per step, gains a_k and c_k decaying."""

    name = "spsa"
    distribution = "rademacher"

    def ask(self, state, step):
        return _SPSA_PAIR

    def sigma(self, step):
        return self.cfg.sigma / (step + 1) ** self.cfg.spsa_gamma

    def lr_scale(self, step):
        a = self.cfg.spsa_a
        return ((a + 1.0) / (step + 1.0 + a)) ** self.cfg.spsa_alpha

    tell_early = Estimator.tell_early   # one pair: nothing to do early

    def tell(self, state, step, probes, ev):
        sigma = self.sigma(step)
        coeff = (ev.losses[0].mean() - ev.losses[1].mean()) / (2.0 * sigma)
        grad = self.accumulate(step, [coeff], ev.dim, PARAM_STREAM)
        return grad, state, {"grad_norm": float(np.linalg.norm(grad))}


class Interface(Estimator):
    """Perturb the ring's inputs per sample; exact backward through the digital layers."""

    name = "interface"

    def ask(self, state, step):
        return _probes(self.cfg.k, self.cfg.form, INPUTS)

    def tell(self, state, step, probes, ev):
        sigma = self.sigma(step)
        losses = ev.losses if self.cfg.form == "one-sided" else ev.losses[1:]
        coeffs = _difference_coeffs(losses, probes, sigma, self.cfg.form)  # (K, B)
        batch, width = ev.batch_size, ev.input_size
        # d(mean loss)/du_b = (1/B) dL_b/du_b; each sample has its own coefficient.
        per_element = np.repeat(coeffs / (len(coeffs) * batch), width, axis=1)
        grad_u = self.accumulate(step, per_element, batch * width,
                                 INPUT_STREAM).reshape(batch, width)
        grad = ev.pack(**ev.post_grads(), **ev.pre_grads(grad_u))
        return grad, state, {"grad_u_norm": float(np.linalg.norm(grad_u))}


class Readout(Estimator):
    """Classic reservoir computing: the ring and the layers before it stay fixed."""

    name = "readout"

    def ask(self, state, step):
        return _CLEAN

    def tell(self, state, step, probes, ev):
        return ev.pack(**ev.post_grads()), state, {}


class Backprop(Estimator):
    """Exact gradient through the differentiable simulated ring (a reference only)."""

    name = "backprop"

    def ask(self, state, step):
        return _CLEAN

    def tell(self, state, step, probes, ev):
        post = ev.post_grads()
        grad_u = ev.ring_vjp(post["features"])
        return ev.pack(**post, **ev.pre_grads(grad_u)), state, {}


class Ridge(Estimator):
    """Classic reservoir computing done in closed form: the trainer passes the training
    and validation parts through the ring once and solves a ridge readout
    (pgt._ridge); there are no gradient steps to ask for."""

    name = "ridge"
    closed_form = True

    def ask(self, state, step):
        raise NotImplementedError("ridge is solved in closed form (Trainer.fit_ridge)")


class Twin(Estimator):
    """Physics-aware training kept honest by probes.

    Every sample goes through the ring once; the loss and every layer after the ring
    use the measured features, and the gradient through the ring is the twin's
    vector-Jacobian product at the measured operating point (pgt._twin: a grey-box
    fit of the ring's map, or a black-box network), fitted online from the run's own
    (input, features) pairs. On probing steps K central interface probes measure
    directional derivatives at the ring's inputs; the estimate is the twin's
    gradient plus the probes' correction of it, Σ_k (ΔL_k/2σ − δ_k·g_twin) δ_k / K,
    unbiased whatever the twin's error and as precise as the twin is good. The
    probes also measure the twin: while their directional derivatives and the
    twin's agree (cosine ≥ 0.9) the steps between probes double, up to
    ``twin_max_period``; when they disagree (< 0.7) the next step probes again.
    """

    name = "twin"
    _AGREE, _DISAGREE = 0.9, 0.7

    def init(self, dim):
        return {"twin.period": np.asarray(1, dtype=np.int64),
                "twin.next": np.asarray(0, dtype=np.int64)}

    def _model(self, n_inputs: int, n_features: int):
        from pgt._twin import make_twin

        c = self.cfg
        return make_twin(c.twin_kind, n_inputs, n_features, c.twin_lr, c.twin_hidden)

    def ask(self, state, step):
        if self.cfg.twin_probes > 0 and step >= int(state["twin.next"]):
            return _probes(self.cfg.twin_probes, "central", INPUTS)
        return _CLEAN

    def tell(self, state, step, probes, ev):
        u, feats = np.asarray(ev.u, dtype=np.float64), np.asarray(ev.feats, dtype=np.float64)
        twin = self._model(u.shape[1], feats.shape[1])
        state = dict(state)
        if "twin.theta" not in state:
            state.update(twin.init(u, feats), **_empty_buffer(self.cfg.twin_buffer, u, feats))
        post = ev.post_grads()
        pred = twin.forward(state, u)
        metrics = {"twin_error": float(((pred - feats) ** 2).mean() / max(feats.var(), 1e-300))}
        grad_u = twin.vjp(state, u, post["features"])
        exact = getattr(ev, "exact_ring_grad", None)
        if exact is not None and (g := exact(post["features"])) is not None:
            metrics["twin_exact_cosine"] = _cosine(g, grad_u)   # simulation only
        if len(probes) > 1:
            correction, agreement = self._probe_correction(step, probes, ev, grad_u)
            grad_u = grad_u + correction
            metrics["twin_probe_cosine"] = agreement
            period = int(state["twin.period"])
            period = (min(2 * period, self.cfg.twin_max_period) if agreement >= self._AGREE
                      else 1 if agreement < self._DISAGREE else period)
            state["twin.period"] = np.asarray(period, dtype=np.int64)
            state["twin.next"] = np.asarray(step + period, dtype=np.int64)
        grad = ev.pack(**post, **ev.pre_grads(grad_u))
        state, metrics["twin_fit_loss"] = self._fit(twin, state, step, u, feats)
        metrics["twin_period"] = int(state["twin.period"])
        return grad, state, metrics

    def _probe_correction(self, step, probes, ev, grad_u):
        """The probes' correction of the twin's gradient, and their agreement with it."""
        k, batch, width = self.cfg.twin_probes, ev.batch_size, ev.input_size
        measured = _difference_coeffs(ev.losses[1:], probes, self.sigma(step), "central")
        deltas = self.directions(step, range(k), batch * width, INPUT_STREAM).reshape(k, batch, width)
        # per-sample directional derivatives; grad_u is of the batch mean: B times smaller
        predicted = (deltas * grad_u[None]).sum(axis=2) * batch
        correction = ((measured - predicted)[..., None] * deltas).sum(axis=0) / (k * batch)
        return correction, _cosine(measured, predicted)

    def _fit(self, twin, state, step, u, feats):
        """Add the batch to the buffer; ``twin_fit_steps`` Adam steps on minibatches of it."""
        size = len(state["twin.buf_u"])
        filled, at = int(state["twin.filled"]), int(state["twin.at"])
        rows = (at + np.arange(len(u))) % size
        buf_u, buf_f = state["twin.buf_u"].copy(), state["twin.buf_f"].copy()
        buf_u[rows], buf_f[rows] = u, feats
        state.update({"twin.buf_u": buf_u, "twin.buf_f": buf_f,
                      "twin.filled": np.asarray(min(size, filled + len(u)), dtype=np.int64),
                      "twin.at": np.asarray((at + len(u)) % size, dtype=np.int64)})
        rng = np.random.default_rng([self.seed, step, 0x7F17])
        loss = float("nan")
        for _ in range(self.cfg.twin_fit_steps):
            pick = rng.integers(0, int(state["twin.filled"]), self.cfg.twin_batch)
            state, loss = twin.fit(state, buf_u[pick], buf_f[pick])
        return state, loss


def _empty_buffer(size: int, u: np.ndarray, feats: np.ndarray) -> dict[str, np.ndarray]:
    return {"twin.buf_u": np.zeros((size, u.shape[1])), "twin.buf_f": np.zeros((size, feats.shape[1])),
            "twin.filled": np.asarray(0, dtype=np.int64), "twin.at": np.asarray(0, dtype=np.int64)}


def _cosine(a, b) -> float:
    a, b = np.ravel(a), np.ravel(b)
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / norm if norm > 0 else 0.0


ESTIMATORS = {cls.name: cls for cls in (PGT, SPSA, Interface, Readout, Ridge, Twin, Backprop)}


def make_estimator(cfg: EstimatorConfig, seed: int) -> Estimator:
    try:
        return ESTIMATORS[cfg.name](cfg, seed)
    except KeyError:
        raise ValueError(f"unknown estimator {cfg.name!r} (known: {', '.join(ESTIMATORS)})") from None
