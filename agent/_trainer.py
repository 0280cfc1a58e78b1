"""One training run's state and its step: ask, drive the ring, tell, update.

The Trainer holds everything a resume needs (parameters, optimizer state, step,
counters, the reservoir's own state where it has one) and exposes it as a dict of
arrays. Every random choice is a pure function of (seed, step, index), so a run
resumed from a checkpoint continues bit-exactly on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trio

from pgt._data import batch_indices, open_dataset
from pgt._metrics import score
from pgt._estimators import INPUT_STREAM, INPUTS, NONE, PARAM_STREAM, PARAMS, make_estimator
from pgt._model import DenseRingModel, Layout
from pgt._optim import make_optimizer
from pgt._schema import Config


@dataclass
class _Evaluation:
    """The per-sample losses of one step's probes and its clean pass (see Evaluation)."""

    losses: np.ndarray
    batch_size: int
    input_size: int
    dim: int
    model: DenseRingModel
    reservoir: object
    theta: np.ndarray
    x: np.ndarray
    y: np.ndarray
    u: np.ndarray | None = None
    feats: np.ndarray | None = None
    probs: np.ndarray | None = None
    done: np.ndarray | None = None
    early: tuple | None = None

    def pack(self, **grads):
        return self.model.pack(**grads)

    def post_grads(self):
        return self.model.post_backward(self.theta, self.feats, self.probs, self.y)

    def pre_grads(self, grad_u):
        return self.model.pre_backward(self.theta, self.x, self.u, grad_u)

    def exact_ring_grad(self, grad_feats):
        """The exact gradient through a differentiable simulated ring, None for a black
        box (for the twin estimator's diagnostics; costs no ring evaluation)."""
        if not callable(getattr(self.reservoir, "vjp", None)):
            return None
        return np.asarray(self.reservoir.vjp(self.u, grad_feats))

    def ring_vjp(self, grad_feats):
        vjp = getattr(self.reservoir, "vjp", None)
        if vjp is None:
            raise ValueError(
                f"estimator 'backprop' needs a differentiable simulated ring; "
                f"{self.reservoir.info.name} is not one"
            )
        return np.asarray(vjp(self.u, grad_feats))


def build_model(cfg: Config, data, info):
    """The configured model (``model.name``) sized for the data and the reservoir."""
    m = cfg.model
    if m.name == "transformer":
        from pgt._transformer import TransformerRingModel

        return TransformerRingModel(
            tokens=data.tokens, patch=data.n_features // data.tokens,
            ring_inputs=info.n_inputs, ring_features=info.n_features,
            n_classes=data.n_outputs, d_model=m.d_model, heads=m.heads,
            mlp_width=m.mlp_width, pool=m.pool, feature_scale=m.feature_scale,
            task=data.task)
    layout = Layout(data.n_features, info.n_inputs, info.n_features, data.n_outputs)
    return DenseRingModel(layout, m.feature_scale, task=data.task)


class Diverged(ArithmeticError):
    """A step's loss, gradient or new parameters are not finite; nothing was changed."""

    def __init__(self, step: int, what: str) -> None:
        super().__init__(f"step {step}: the {what} is not finite (NaN or infinity)")
        self.step, self.what = step, what


def _check_finite(step: int, **values) -> None:
    for what, value in values.items():
        if not np.isfinite(value).all():
            raise Diverged(step, what)


def _check_continuous(cfg, data, reservoir) -> None:
    """Continuous mode needs a time series, a ring that runs sequences and an estimator
    that needs no backward of a sequence. Raises ConfigError (one line)."""
    from pgt._config import ConfigError

    if data.info.get("split") != "chronological":
        raise ConfigError(f"config: data.continuous needs a time series in time order "
                          f"(narma10, mackey_glass, delayed_recall), not {cfg.data.name!r}")
    if not callable(getattr(reservoir, "forward_sequence", None)):
        raise ConfigError(f"config: data.continuous needs a reservoir that runs sequences "
                          f"(sim://ring); {reservoir.info.name} does not")
    if cfg.estimator.name in ("backprop", "twin"):
        raise ConfigError(f"config: data.continuous does not support estimator "
                          f"{cfg.estimator.name!r} (use interface, pgt, spsa, readout or ridge)")
    if len(data.y_train) < cfg.data.washout + cfg.data.batch_size:
        raise ConfigError(f"config: data.continuous needs at least washout + batch_size "
                          f"({cfg.data.washout + cfg.data.batch_size}) training samples, "
                          f"the data has {len(data.y_train)}")


class Trainer:
    """A model around a reservoir, trained by the configured estimator."""

    _lead_x = None    # continuous mode: the washout samples before the current batch

    lr_factor = 1.0   # lowered by each divergence rollback (train.on_divergence)

    def __init__(self, cfg: Config, reservoir, data=None) -> None:
        """``data``: the run's Dataset, when the caller has opened it already (else
        ``open_dataset(cfg.data)``)."""
        self.cfg = cfg
        self.reservoir = reservoir
        self.data = data if data is not None else open_dataset(cfg.data)
        self.estimator = make_estimator(cfg.estimator, cfg.seed)
        if cfg.estimator.name == "backprop" and not callable(getattr(reservoir, "vjp", None)):
            from pgt._config import ConfigError

            raise ConfigError(f"config: estimator 'backprop' needs a differentiable simulated "
                              f"ring (sim://ring); {reservoir.info.name} is a black box: use "
                              f"interface, pgt, spsa, readout or ridge")
        self.continuous = cfg.data.continuous
        if self.continuous:
            _check_continuous(cfg, self.data, reservoir)
        self.model = build_model(cfg, self.data, reservoir.info)
        if getattr(self.estimator, "closed_form", False):
            from pgt._ridge import LinearReadoutModel

            self.model = LinearReadoutModel(self.model, reservoir.info.n_features,
                                            self.data.n_outputs, self.data.task)
        layout = self.model.layout
        self.optimizer = make_optimizer(cfg.optimizer)
        self.params = self.model.init_params(cfg.seed, cfg.model.init_scale)
        self.opt_state = self.optimizer.init(layout.dim)
        self.est_state = self.estimator.init(layout.dim)
        self.step = 0
        self.ring_evals = 0
        self.eval_ring_evals = 0
        # A closed-form fit is one step, however many train.steps says.
        self.total_steps = 1 if getattr(self.estimator, "closed_form", False) else cfg.train.steps

    _ring_wait_s = 0.0   # time spent awaiting the ring (device, link, queue): step timing

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    # -- the ring ---------------------------------------------------------------

    async def _ring(self, u: np.ndarray) -> np.ndarray:
        """Features for every row of ``u``, in chunks of at most max_batch, concurrently."""
        limit = self.reservoir.info.max_batch
        chunks = [u[i : i + limit] for i in range(0, len(u), limit)]
        results: list = [None] * len(chunks)

        async def run(i: int) -> None:
            results[i] = np.asarray(await self.reservoir.forward(chunks[i]))

        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(len(chunks)):
                nursery.start_soon(run, i)
        self._ring_wait_s += trio.current_time() - t0
        return np.concatenate(results, axis=0)

    async def _ring_sequences(self, u: np.ndarray, lead: np.ndarray) -> np.ndarray:
        """Continuous mode: the features of sequences ``u`` (P, B, n), each driven after its
        washout ``lead`` (P, W, n) with the ring's state running on (P, B, F)."""
        t0 = trio.current_time()
        rows = np.concatenate([lead, u], axis=1)
        feats = np.asarray(await self.reservoir.forward_sequence(rows))
        self._ring_wait_s += trio.current_time() - t0
        return feats[:, lead.shape[1]:]

    def _pre(self, thetas, x):
        return np.clip(self.model.pre(thetas, x), -1.0, 1.0)

    def _sequence_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Continuous mode: step ``step``'s batch, consecutive training samples from a
        start drawn from (seed, step), and the washout samples just before it."""
        n, batch, washout = len(self.data.y_train), self.cfg.data.batch_size, self.cfg.data.washout
        start = int(np.random.default_rng([self.cfg.seed, step, 0xC0417]).integers(
            washout, n - batch + 1))
        return np.arange(start, start + batch), np.arange(start - washout, start)

    # -- one step ---------------------------------------------------------------

    def _probe_inputs(self, probes, x, sigma, step, ahead=None):
        """Stacked parameters (P, d) and ring inputs (P, B, n) of every probe.

        ``ahead``: {stream: the k's later calls of this step will ask for}, so that
        the estimator generates their directions in a few calls (see
        ``Estimator.directions``).
        """
        lay, est = self.model.layout, self.estimator
        ahead = ahead or {}
        param_rows = [i for i, p in enumerate(probes) if p.target == PARAMS]
        if param_rows:
            ks = [probes[i].k for i in param_rows]
            signs = np.array([probes[i].sign for i in param_rows])[:, None]
            deltas = est.directions(step, ks, lay.dim, PARAM_STREAM, ahead.get(PARAM_STREAM, ()))
        if param_rows and len(param_rows) == len(probes):   # θ + σ s δ, as += would
            thetas = self.params + sigma * signs * deltas
        else:
            thetas = np.repeat(self.params[None], len(probes), axis=0)
            if param_rows:
                thetas[param_rows] += sigma * signs * deltas
        if param_rows:
            u = self.model.pre(thetas, x)
        else:   # every probe's θ is θ: the layers before the ring once (per probe alone)
            u = np.repeat(self.model.pre(thetas[:1], x), len(probes), axis=0)
        input_rows = [i for i, p in enumerate(probes) if p.target == INPUTS]
        if input_rows:
            ks = [probes[i].k for i in input_rows]
            signs = np.array([probes[i].sign for i in input_rows])[:, None]
            deltas = est.directions(step, ks, u[0].size, INPUT_STREAM, ahead.get(INPUT_STREAM, ()))
            u[input_rows] += (sigma * signs * deltas).reshape(len(input_rows), *u.shape[1:])
        return thetas, np.clip(u, -1.0, 1.0)

    async def _evaluate(self, probes, x, y, sigma, step) -> _Evaluation:
        if hasattr(self.reservoir, "map_trials"):   # a device pool: a trial per probe pair
            from pgt._trials import evaluate_pooled
            return await evaluate_pooled(self, probes, x, y, sigma, step)
        thetas, u = self._probe_inputs(probes, x, sigma, step)
        n_probes, batch, width = u.shape
        if self.continuous:   # each probe runs on from its own washout of the samples before
            lead = self._pre(thetas if len(thetas) == n_probes else thetas[:1], self._lead_x)
            lead = np.broadcast_to(lead, (n_probes,) + lead.shape[1:])
            feats = await self._ring_sequences(u, lead)
            self.ring_evals += n_probes * (batch + lead.shape[1])
        else:
            feats = (await self._ring(u.reshape(-1, width))).reshape(n_probes, batch, -1)
            self.ring_evals += n_probes * batch
        losses, probs = self.model.post(thetas, feats, y)
        ev = _Evaluation(losses, batch, width, self.model.layout.dim, self.model,
                         self.reservoir, self.params, x, y)
        clean = [i for i, p in enumerate(probes) if p.target == NONE]
        if clean:
            i = clean[0]
            ev.u, ev.feats, ev.probs = u[i], feats[i], probs[i]
        return ev

    async def train_step(self) -> dict[str, float]:
        """Run one optimizer step; return its metrics, with where its time went.

        ``time_link_s``: bytes on the device link (a device backend's ``link_seconds``,
        known when it knows the link's rate); ``time_ring_s``: the rest of the time
        awaiting the ring; ``time_host_s``: everything else (digital layers, estimator).
        """
        if getattr(self.estimator, "closed_form", False):
            return await self.fit_ridge()
        t0, ring0 = trio.current_time(), self._ring_wait_s
        link0 = getattr(self.reservoir, "link_seconds", 0.0)
        if self.continuous:
            idx, lead = self._sequence_batch(self.step)
            self._lead_x = self.data.x_train[lead]
        else:
            idx = batch_indices(len(self.data.y_train), self.cfg.data.batch_size, self.cfg.seed,
                                self.step)
        x, y = self.data.x_train[idx], self.data.y_train[idx]
        # Overflow is not an error here but a divergence, which the check below names.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            grad, metrics, ev = await self.estimate(x, y, self.step)
            loss = float(ev.losses.mean())
            lr_scale = self.estimator.lr_scale(self.step) * self._schedule() * self.lr_factor
            params, opt_state = self.optimizer.update(self.params, grad, self.opt_state, lr_scale)
        _check_finite(self.step + 1, loss=loss, gradient=grad, parameters=params)
        self.params, self.opt_state = params, opt_state
        self.step += 1
        ring = self._ring_wait_s - ring0
        link = getattr(self.reservoir, "link_seconds", 0.0) - link0
        timing = {"time_link_s": link, "time_ring_s": max(ring - link, 0.0),
                  "time_host_s": max(trio.current_time() - t0 - ring, 0.0)}
        return {"step": self.step, "loss": loss, "ring_evals": self.ring_evals, **metrics, **timing}

    async def estimate(self, x, y, step: int):
        """The estimator's gradient at the current parameters on batch (x, y).

        Returns (flat gradient, metrics, evaluation); updates the estimator state
        and the ring-evaluation count but not the parameters.
        """
        probes = self.estimator.ask(self.est_state, step)
        ev = await self._evaluate(probes, x, y, self.estimator.sigma(step), step)
        grad, self.est_state, metrics = self.estimator.tell(self.est_state, step, probes, ev)
        return grad, metrics, ev

    def _schedule(self) -> float:
        """Learning-rate multiplier: constant, or cosine decay to 0 over the run."""
        if self.cfg.optimizer.schedule == "cosine":
            return 0.5 * (1.0 + np.cos(np.pi * self.step / max(1, self.total_steps)))
        return 1.0

    async def features(self, x: np.ndarray, lead_x: np.ndarray | None = None) -> np.ndarray:
        """The ring's features of samples ``x`` at the current parameters (B, F); in
        continuous mode ``x`` runs as one sequence after the washout ``lead_x``."""
        u = self._pre(self.params, x)[0]
        if not self.continuous:
            return await self._ring(u)
        lead = self._pre(self.params, lead_x if lead_x is not None else x[:0])[0]
        return (await self._ring_sequences(u[None], lead[None]))[0]

    async def outputs(self, x: np.ndarray, y=None, lead_x: np.ndarray | None = None):
        """The model's outputs (probabilities or predictions) of ``x`` through the ring,
        and the per-sample losses when labels ``y`` are given."""
        feats = await self.features(x, lead_x)
        self.eval_ring_evals += len(x) + (0 if lead_x is None else len(lead_x))
        if y is None:   # the heads need labels only for the loss
            y = (np.zeros(len(x), dtype=np.int64) if self.data.task == "classification"
                 else np.zeros((len(x), self.data.n_outputs)))
        losses, out = self.model.post(self.params, feats[None], y)
        return out[0], losses[0]

    async def evaluate(self) -> dict[str, float]:
        """Validation (when the data has it) and test metrics of the current parameters,
        through the ring: ``val_*`` and ``test_*`` (accuracy and loss, or the
        regression errors; pgt._metrics)."""
        result = {}
        for part in ("val", "test") if self.data.x_val is not None else ("test",):
            x, y = self.data.part(part)
            out, losses = await self.outputs(x, y, self._lead_of(part))
            result.update({f"{part}_{k}": v for k, v in score(self.data.task, out, y, losses).items()})
        result["eval_ring_evals"] = self.eval_ring_evals
        return result

    def _lead_of(self, part: str) -> np.ndarray | None:
        """Continuous mode: the samples just before ``part`` in time (its washout)."""
        if not self.continuous:
            return None
        before = self.data.x_train if part == "val" or self.data.x_val is None else self.data.x_val
        return before[len(before) - self.cfg.data.washout:]

    async def fit_ridge(self) -> dict[str, float]:
        """Estimator ``ridge``: the training and validation parts through the ring once,
        then the readout in closed form, λ chosen on validation (pgt._ridge)."""
        from pgt._data import DataError
        from pgt._ridge import fit_ridge

        if self.data.x_val is None:
            raise DataError("estimator 'ridge' chooses its regularisation on the validation "
                            "split: set data.val_fraction above 0")
        t0 = trio.current_time()
        f_train = await self.features(self.data.x_train)
        lead = self._lead_of("val")
        f_val = await self.features(self.data.x_val, lead)
        self.ring_evals += len(f_train) + len(f_val) + (0 if lead is None else len(lead))
        w, b, info = fit_ridge(f_train, self.data.y_train, f_val, self.data.y_val, self.data.task)
        sl = self.model.layout.slices
        self.params = self.params.copy()
        self.params[sl["w_r"]], self.params[sl["b_r"]] = w.ravel(), b
        losses, _ = self.model.post(self.params, f_train[None], self.data.y_train)
        self.step = self.total_steps
        return {"step": self.step, "loss": float(losses.mean()), "ring_evals": self.ring_evals,
                **info, "time_host_s": trio.current_time() - t0}

    # -- resume -----------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {
            "params": self.params,
            "step": np.asarray(self.step, dtype=np.int64),
            "ring_evals": np.asarray(self.ring_evals, dtype=np.int64),
            "eval_ring_evals": np.asarray(self.eval_ring_evals, dtype=np.int64),
            "lr_factor": np.asarray(self.lr_factor, dtype=np.float64),
        }
        state.update({f"opt.{k}": v for k, v in self.opt_state.items()})
        state.update({f"est.{k}": v for k, v in self.est_state.items()})
        device_state = getattr(self.reservoir, "state_dict", None)
        if device_state is not None:
            state.update({f"reservoir.{k}": v for k, v in device_state().items()})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if state["params"].shape != self.params.shape:
            raise ValueError(
                f"checkpoint parameters have shape {state['params'].shape}, "
                f"this model needs {self.params.shape}"
            )
        self.params = np.array(state["params"], dtype=np.float64)
        self.step = int(state["step"])
        self.ring_evals = int(state["ring_evals"])
        self.eval_ring_evals = int(state["eval_ring_evals"])
        self.lr_factor = float(state.get("lr_factor", 1.0))
        self.opt_state = {k[4:]: np.array(v) for k, v in state.items() if k.startswith("opt.")}
        self.est_state = {k[4:]: np.array(v) for k, v in state.items() if k.startswith("est.")}
        loader = getattr(self.reservoir, "load_state_dict", None)
        device_state = {k[10:]: v for k, v in state.items() if k.startswith("reservoir.")}
        if loader is not None and device_state:
            loader(device_state)
