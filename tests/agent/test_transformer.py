"""The transformer with a ring inside: layout, the backward chain around the ring,
every estimator on it, and the sequence datasets it reads."""

import numpy as np
import pytest

from pgt._config import ConfigError, load_config
from pgt._data import DataError, load_dataset
from pgt._tasks import delayed_parity
from pgt._trainer import Trainer
from pgt._transformer import TransformerRingModel
from pgt.backends import open_reservoir
from tests.numeric import numeric_grad


@pytest.fixture
def model():
    return TransformerRingModel(tokens=3, patch=2, ring_inputs=6, ring_features=12,
                                n_classes=4, d_model=4, heads=2, mlp_width=5,
                                feature_scale=0.5)


def test_layout_packs_every_layer_once_with_the_pre_ring_layers_first(model):
    lay = model.layout
    covered = np.zeros(lay.dim, int)
    for sl in lay.slices.values():
        covered[sl] += 1
    assert (covered == 1).all()
    assert lay.pre_dim == lay.slices["ring_in_b"].stop
    assert all(sl.stop <= lay.pre_dim for n, sl in lay.slices.items()
               if n.startswith(("embed", "pos", "block1", "ring_in")))




@pytest.mark.parametrize("pool", ["mean", "last"])
def test_pre_and_post_backward_chain_matches_finite_differences(pool):
    model = TransformerRingModel(tokens=3, patch=2, ring_inputs=6, ring_features=12,
                                 n_classes=4, d_model=4, heads=2, mlp_width=5,
                                 pool=pool, feature_scale=0.5)
    rng = np.random.default_rng(0)
    theta = model.init_params(1) + rng.normal(size=model.layout.dim) * 0.1
    x, y = rng.uniform(size=(5, 6)), rng.integers(0, 4, 5)
    lift = rng.normal(size=(6, 12))

    def ring(u):  # a smooth stand-in from ring inputs to features, for the chain rule
        return np.tanh(u @ lift)

    def loss(t):
        return model.post(t, ring(model.pre(t, x)[0])[None], y)[0].mean()

    u = model.pre(theta, x)[0]
    feats = ring(u)
    _, probs = model.post(theta, feats[None], y)
    post = model.post_backward(theta, feats, probs[0], y)
    grad_u = ((post["features"] * (1 - feats ** 2)) @ lift.T)
    analytic = model.pack(**post, **model.pre_backward(theta, x, u, grad_u))
    np.testing.assert_allclose(analytic, numeric_grad(lambda: loss(theta), theta), rtol=1e-5, atol=1e-9)


def test_a_probe_stack_equals_one_pass_per_probe(model):
    rng = np.random.default_rng(2)
    thetas = model.init_params(0) + rng.normal(size=(3, model.layout.dim)) * 0.1
    x, y = rng.uniform(size=(4, 6)), rng.integers(0, 4, 4)
    u = model.pre(thetas, x)
    feats = rng.uniform(size=(3, 4, 12))
    losses, _ = model.post(thetas, feats, y)
    for p in range(3):
        np.testing.assert_allclose(u[p], model.pre(thetas[p], x)[0])
        np.testing.assert_allclose(losses[p], model.post(thetas[p], feats[p][None], y)[0][0])
    same = np.repeat(thetas[:1], 3, axis=0)  # one θ for all probes: shared pass
    np.testing.assert_allclose(model.post(same, feats, y)[0][2], model.post(thetas[0], feats[2][None], y)[0][0])


def test_a_reservoir_that_does_not_fit_the_tokens_is_a_config_error():
    with pytest.raises(ConfigError, match="multiples of 8"):
        TransformerRingModel(tokens=8, patch=8, ring_inputs=12, ring_features=12 * 24, n_classes=10)


TINY = ["model.name=transformer", "data.name=digit_rows", "model.d_model=8",
        "model.mlp_width=8", "data.batch_size=8", "train.steps=2"]


@pytest.mark.parametrize("name", ["interface", "pgt", "spsa", "readout", "backprop"])
async def test_every_estimator_takes_a_step_with_the_transformer(name):
    cfg = load_config(None, [f"estimator.name={name}", "optimizer.weight_decay=0", *TINY])
    async with open_reservoir("sim://ring?nodes=4&inputs=8") as ring:
        trainer = Trainer(cfg, ring)
        start = trainer.params.copy()
        metrics = await trainer.train_step()
        result = await trainer.evaluate()
    assert np.isfinite(metrics["loss"]) and 0 <= result["test_accuracy"] <= 1
    moved = trainer.params != start
    assert moved.any(), name
    if name == "readout":  # the layers before the ring stay as they were
        assert not moved[: trainer.model.layout.pre_dim].any()


async def test_the_transformer_reads_the_memory_task_through_the_identity_reservoir():
    cfg = load_config(None, ["model.name=transformer", "data.name=delayed_parity",
                             "data.seq_len=6", "model.d_model=8", "train.steps=1"])
    async with open_reservoir("sim://identity?inputs=6") as identity:
        trainer = Trainer(cfg, identity)
        assert trainer.model.per_token_in == trainer.model.per_token_out == 1
        assert np.isfinite((await trainer.train_step())["loss"])


def test_digit_rows_are_the_digits_as_eight_tokens():
    flat = load_dataset("digits", 0.25, 0)
    rows = load_dataset("digit_rows", 0.25, 0)
    assert (rows.tokens, flat.tokens) == (8, 1)
    np.testing.assert_array_equal(rows.x_train, flat.x_train)
    assert rows.x_train.shape[1] == 64 and rows.n_classes == 10


def test_delayed_parity_is_seeded_and_labels_the_delayed_window():
    x, y = delayed_parity(seq_len=10, delay=3, bits=2, seed=4)
    again, _ = delayed_parity(seq_len=10, delay=3, bits=2, seed=4)
    other, _ = delayed_parity(seq_len=10, delay=3, bits=2, seed=5)
    np.testing.assert_array_equal(x, again)
    assert not np.array_equal(x, other)
    assert x.shape == (2000, 10) and set(np.unique(x)) == {0.0, 1.0}
    np.testing.assert_array_equal(y, (x[:, 5] + x[:, 6]) % 2)
    assert 0.45 < y.mean() < 0.55


def test_delayed_parity_through_the_config():
    cfg = load_config(None, ["data.name=delayed_parity", "data.seq_len=12", "data.delay=1"])
    data = load_dataset(cfg.data.name, cfg.data.test_fraction, cfg.data.split_seed, cfg.data)
    assert data.tokens == 12 and data.n_features == 12 and data.n_classes == 2
    assert len(data.y_train) + len(data.y_test) == 2000
    with pytest.raises(DataError, match="do not fit"):
        load_dataset("delayed_parity", 0.25, 0, load_config(None, ["data.delay=15"]).data)


def test_heads_must_divide_the_model_width():
    with pytest.raises(ConfigError, match="heads"):
        load_config(None, ["model.d_model=10", "model.heads=3"])
