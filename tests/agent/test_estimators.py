"""Estimators on the differentiable simulated ring, against its exact gradient."""


import numpy as np
import pytest

from pgt._estimators import make_estimator
from pgt._schema import Config, EstimatorConfig
from pgt._trainer import Trainer
from pgt.backends import open_reservoir

SMALL_RING = "sim://ring?nodes=6&inputs=4"


def cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture
async def trainer():
    async with open_reservoir(SMALL_RING) as reservoir:
        cfg = Config()
        trainer = Trainer(cfg, reservoir)
        # leave the initial point: a few exact steps give every layer a gradient
        trainer.estimator = make_estimator(EstimatorConfig(name="backprop"), seed=0)
        for _ in range(5):
            await trainer.train_step()
        yield trainer


def batch(trainer, size=16):
    return trainer.data.x_train[:size], trainer.data.y_train[:size]


async def estimate(trainer, step, **est):
    trainer.estimator = make_estimator(EstimatorConfig(**est), seed=0)
    grad, _, _ = await trainer.estimate(*batch(trainer), step)
    return grad


async def test_mean_of_pgt_estimates_converges_to_the_exact_gradient(trainer):
    exact = await estimate(trainer, 0, name="backprop")
    errors = {}
    total = np.zeros_like(exact)
    for n in range(1, 401):
        total += await estimate(trainer, n, name="pgt", k=16, sigma=1e-4)
        if n in (25, 100, 400):
            errors[n] = np.linalg.norm(total / n - exact) / np.linalg.norm(exact)
    # the error of a mean of n unbiased estimates shrinks like 1/sqrt(n)
    assert errors[400] < 0.6 * errors[25]
    assert errors[100] < 0.75 * errors[25]
    assert cosine(total / 400, exact) > 0.9


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
async def test_cosine_to_the_exact_gradient_grows_like_sqrt_k_over_d(trainer, distribution):
    exact = await estimate(trainer, 0, name="backprop")
    dim = exact.size
    means = {}
    for k in (1, 4, 16, 64):
        cosines = [cosine(await estimate(trainer, 1000 + t, name="pgt", k=k, sigma=1e-4,
                                         distribution=distribution), exact) for t in range(40)]
        means[k] = float(np.mean(cosines))
        theory = np.sqrt(k / (dim + k + 1))  # E|ĝ|² = |g|² (d + K + 1) / K for Gaussian δ
        assert 0.6 * theory < means[k] < 1.5 * theory, (k, means[k], theory)
    assert means[1] < means[4] < means[16] < means[64]
    assert 2.5 < means[64] / means[4] < 5.5  # sqrt(16) = 4


async def test_interface_estimate_is_close_to_exact_with_few_directions(trainer):
    exact = await estimate(trainer, 0, name="backprop")
    cosines = [cosine(await estimate(trainer, s, name="interface", k=4, sigma=1e-3), exact) for s in range(10)]
    # only the 4 ring inputs per sample are estimated; everything digital is exact
    assert np.mean(cosines) > 0.7


async def test_one_sided_and_central_agree_on_average(trainer):
    exact = await estimate(trainer, 0, name="backprop")
    for form in ("one-sided", "central"):
        mean = np.mean([await estimate(trainer, s, name="interface", k=8, sigma=1e-4, form=form)
                        for s in range(60)], axis=0)
        assert cosine(mean, exact) > 0.97, form


async def test_readout_touches_only_the_layers_after_the_ring(trainer):
    grad = await estimate(trainer, 0, name="readout")
    exact = await estimate(trainer, 0, name="backprop")
    split = trainer.model.layout.pre_dim
    assert not grad[:split].any()
    np.testing.assert_allclose(grad[split:], exact[split:], rtol=1e-12)


async def test_spsa_gains_decay_on_spall_schedules(trainer):
    est = make_estimator(EstimatorConfig(name="spsa", sigma=0.1, spsa_a=10), seed=0)
    assert est.sigma(0) == pytest.approx(0.1)
    assert est.sigma(99) == pytest.approx(0.1 / 100**0.101)
    assert est.lr_scale(0) == pytest.approx(1.0)
    assert est.lr_scale(89) == pytest.approx((11 / 100) ** 0.602)
    assert len(est.ask({}, 0)) == 2


async def test_estimates_count_ring_evaluations(trainer):
    x, y = batch(trainer)
    for name, form, k, passes in [("pgt", "central", 3, 6), ("pgt", "one-sided", 3, 4),
                                  ("interface", "central", 3, 7), ("spsa", "central", 3, 2),
                                  ("readout", "central", 3, 1)]:
        before = trainer.ring_evals
        trainer.estimator = make_estimator(EstimatorConfig(name=name, form=form, k=k), seed=0)
        await trainer.estimate(x, y, 0)
        assert trainer.ring_evals - before == passes * len(y), name


async def test_backprop_refuses_a_device_that_is_not_differentiable(trainer):
    class Opaque:
        def __init__(self, inner):
            self.info = inner.info
            self.inner = inner

        async def forward(self, u):
            return await self.inner.forward(u)

    trainer.reservoir = Opaque(trainer.reservoir)
    with pytest.raises(ValueError, match="differentiable"):
        await estimate(trainer, 0, name="backprop")


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
def test_remembered_directions_and_their_sum_are_the_bits_regenerated(dist):
    """A pair's k asked twice, rows generated ahead in chunks, the memo's sum: the bits
    of kernels.directions and kernels.accumulate."""
    from pgt.kernels import accumulate, directions

    est = make_estimator(EstimatorConfig(name="pgt", k=11, distribution=dist), seed=7)
    got = np.concatenate([est.directions(3, [k, k], 333, 0, ahead=range(11)) for k in range(11)])
    np.testing.assert_array_equal(got, directions(7, 3, np.repeat(np.arange(11), 2), 333, dist))
    for coeffs in (np.random.default_rng(0).normal(size=11),
                   np.random.default_rng(1).normal(size=(11, 333))):
        assert (est.accumulate(3, coeffs, 333, 0).tobytes()
                == accumulate(7, 3, coeffs, 333, dist).tobytes())


class _Landing:
    """An evaluation whose losses land one probe pair at a time, as a device pool's do."""

    def __init__(self, losses, dim):
        self.losses, self.dim = np.zeros_like(losses), dim
        self.done, self.early = np.zeros(len(losses), dtype=bool), None

    def land(self, rows, losses):
        self.losses[rows], self.done[rows] = losses[rows], True


@pytest.mark.parametrize("form", ["central", "one-sided"])
def test_tell_early_sums_what_has_landed_and_tell_ends_on_the_same_bits(form):
    dim, k = 333, 11
    est = make_estimator(EstimatorConfig(name="pgt", k=k, form=form), seed=7)
    probes = est.ask({}, 3)
    losses = np.random.default_rng(0).normal(size=(len(probes), 5))
    rows = [[2 * i, 2 * i + 1] for i in range(k)] if form == "central" else \
        [[0]] + [[i + 1] for i in range(k)]
    est.directions(3, range(k), dim, 0)   # as the step's prepares do
    landing, progress = _Landing(losses, dim), []
    for group in rows[1:] + rows[:1]:     # the first trial lands last
        landing.land(group, losses)
        est.tell_early({}, 3, probes, landing)
        progress.append(landing.early[0] if landing.early else 0)
    # Nothing before the first trial lands; then whole chunks of 4 in order, all 11 at the end.
    assert progress[-2] == 0 and progress[-1] == k
    landing2 = _Landing(losses, dim)
    for group in rows:                    # in order: chunks as soon as they are whole
        landing2.land(group, losses)
        est.tell_early({}, 3, probes, landing2)
        progress.append(landing2.early[0] if landing2.early else 0)
    in_order = [0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 11]
    assert progress[len(rows):] == (in_order if form == "central" else [0] + in_order)
    all_at_once = _Landing(losses, dim)
    all_at_once.land(list(range(len(probes))), losses)
    grad = est.tell({}, 3, probes, all_at_once)[0]
    assert est.tell({}, 3, probes, landing)[0].tobytes() == grad.tobytes()
    assert est.tell({}, 3, probes, landing2)[0].tobytes() == grad.tobytes()


def test_rows_generated_ahead_in_a_thread_are_the_bits_of_directions():
    import trio

    from pgt._trials import prefetch_directions
    from pgt.kernels import directions

    est = make_estimator(EstimatorConfig(name="pgt", k=11, distribution="gaussian"), seed=7)
    trio.run(prefetch_directions, est, {}, 4, 333)
    assert est.remembered(4, range(11), 333, 0)
    got = est.directions(4, list(range(11)), 333, 0)
    np.testing.assert_array_equal(got, directions(7, 4, range(11), 333, "gaussian"))


def test_nothing_is_generated_ahead_that_the_memo_cannot_keep(monkeypatch):
    import trio

    import pgt._estimators as estimators
    from pgt._trials import _PREFETCH, prefetch_directions

    monkeypatch.setattr(estimators, "_MEMO_LIMIT", 5 * 333)   # room for five rows of 333
    est = make_estimator(EstimatorConfig(name="pgt", k=_PREFETCH + 3), seed=7)
    generated = []
    generate = est.generate
    est.generate = lambda *a: generated.append(len(a[1])) or generate(*a)
    trio.run(prefetch_directions, est, {}, 4, 333)
    assert generated == [] and not est.remembered(4, [0], 333, 0)
    # the first chunk fits, not the 3 rows after it
    monkeypatch.setattr(estimators, "_MEMO_LIMIT", (_PREFETCH + 2) * 333)
    trio.run(prefetch_directions, est, {}, 4, 333)
    assert generated == [_PREFETCH] and est.remembered(4, range(_PREFETCH), 333, 0)
    assert not est.remembered(4, [_PREFETCH], 333, 0)
