"""The dense model around the ring: layout, exact backwards, data and optimizers."""

import numpy as np
import pytest

from pgt._data import DataError, batch_indices, load_dataset, split, validate
from pgt._model import DenseRingModel, Layout
from pgt._optim import Adam, SGD
from pgt._schema import OptimizerConfig
from tests.numeric import numeric_grad


@pytest.fixture
def model():
    return DenseRingModel(Layout(n_in=5, n_ring_in=3, n_ring_out=7, n_classes=4), feature_scale=0.5)


def test_layout_packs_every_layer_once(model):
    lay = model.layout
    assert lay.dim == 5 * 3 + 3 + 7 * 4 + 4
    assert lay.pre_dim == 18
    covered = np.zeros(lay.dim, int)
    for sl in lay.slices.values():
        covered[sl] += 1
    assert (covered == 1).all()




def test_post_and_pre_backward_match_finite_differences(model):
    rng = np.random.default_rng(0)
    theta = rng.normal(size=model.layout.dim)
    x, y = rng.uniform(size=(6, 5)), rng.integers(0, 4, 6)
    ring = np.tanh  # any smooth stand-in from ring inputs to features, for the chain rule
    lift = rng.normal(size=(3, 7))

    def loss(t):
        u = model.pre(t, x)[0]
        return model.post(t, ring(u @ lift)[None], y)[0].mean()

    u = model.pre(theta, x)[0]
    feats = ring(u @ lift)
    _, probs = model.post(theta, feats[None], y)
    post = model.post_backward(theta, feats, probs[0], y)
    grad_u = (post["features"] * (1 - feats**2)) @ lift.T
    grad = model.pack(**post, **model.pre_backward(theta, x, u, grad_u))
    np.testing.assert_allclose(grad, numeric_grad(lambda: loss(theta), theta), rtol=1e-5, atol=1e-9)


def test_probe_stack_equals_one_parameter_vector_at_a_time(model):
    rng = np.random.default_rng(1)
    thetas = rng.normal(size=(3, model.layout.dim))
    x = rng.uniform(size=(4, 5))
    stacked = model.pre(thetas, x)
    for p in range(3):
        np.testing.assert_allclose(stacked[p], model.pre(thetas[p], x)[0])
    assert (np.abs(stacked) < 1).all()


def test_digits_split_is_seeded_stratified_and_disjoint():
    a = load_dataset("digits", 0.25, split_seed=0)
    b = load_dataset("digits", 0.25, split_seed=0)
    c = load_dataset("digits", 0.25, split_seed=1)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_test, c.x_test)
    assert len(a.y_train) + len(a.y_test) == 1797
    assert a.n_classes == 10 and a.n_features == 64
    assert 0 <= a.x_train.min() and a.x_train.max() <= 1
    counts = np.bincount(a.y_test) / np.bincount(a.y_train + 0)
    assert np.allclose(counts, 1 / 3, atol=0.02)


def test_batches_cover_each_epoch_once_and_are_pure():
    n, size = 100, 10
    epoch = np.concatenate([batch_indices(n, size, 3, s) for s in range(10)])
    assert sorted(epoch) == list(range(n))
    np.testing.assert_array_equal(batch_indices(n, size, 3, 7), batch_indices(n, size, 3, 7))
    assert not np.array_equal(batch_indices(n, size, 3, 10), batch_indices(n, size, 3, 0))


@pytest.mark.parametrize(
    ("x", "y", "named"),
    [
        (np.zeros((4, 2, 2)), np.zeros(4, int), "2-D"),
        (np.zeros((4, 2)), np.zeros(3, int), "labels must have shape"),
        (np.full((2, 2), np.nan), np.zeros(2, int), "NaN"),
        (np.zeros((2, 2)), np.array([0.5, 1.0]), "integers"),
    ],
)
def test_bad_dataset_shapes_are_one_line_errors(x, y, named):
    with pytest.raises(DataError, match=named) as info:
        validate(x, y, "mine")
    assert "mine" in str(info.value) and "\n" not in str(info.value)


def test_unknown_dataset_is_named():
    with pytest.raises(DataError, match="mnist"):
        load_dataset("mnist", 0.25, 0)


def test_split_keeps_every_class_in_both_parts():
    x, y = np.arange(40.0).reshape(20, 2), np.repeat(np.arange(4), 5)
    data = split(x, y, 0.4, seed=0)
    assert set(data.y_test) == set(data.y_train) == {0, 1, 2, 3}


def test_adam_first_step_moves_each_parameter_by_lr():
    opt = Adam(OptimizerConfig(lr=0.1, weight_decay=0.0))
    params = np.array([1.0, -2.0, 3.0])
    new, state = opt.update(params, np.array([0.5, -3.0, 1e-3]), opt.init(3))
    np.testing.assert_allclose(new, params - 0.1 * np.array([1, -1, 1]), rtol=1e-4)
    assert int(state["t"]) == 1


def test_sgd_momentum_accumulates():
    opt = SGD(OptimizerConfig(name="sgd", lr=0.1, momentum=0.5, weight_decay=0.0))
    params, state = np.zeros(1), opt.init(1)
    params, state = opt.update(params, np.ones(1), state)
    params, state = opt.update(params, np.ones(1), state)
    np.testing.assert_allclose(params, [-0.1 - 0.15])
