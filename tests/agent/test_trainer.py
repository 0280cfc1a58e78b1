"""The trainer: it learns, it resumes exactly in-process, and it reaches the ring
only through the Reservoir protocol."""

import numpy as np

from pgt._config import load_config
from pgt._trainer import Trainer
from pgt.backends import open_reservoir


async def test_a_short_interface_run_learns_the_digits():
    cfg = load_config(None, ["train.steps=150"])
    async with open_reservoir("sim://ring?nodes=12&inputs=8") as ring:
        trainer = Trainer(cfg, ring)
        before = (await trainer.evaluate())["test_accuracy"]
        while not trainer.done:
            await trainer.train_step()
        after = (await trainer.evaluate())["test_accuracy"]
    assert before < 0.3 and after > 0.8


async def run_steps(trainer, n):
    for _ in range(n):
        await trainer.train_step()


async def test_state_dict_resumes_bit_exactly_with_a_noisy_drifting_ring():
    url = "sim://ring?nodes=8&inputs=8&noise=0.02&drift=0.05&drift_period=7"
    cfg = load_config(None, ["train.steps=12", "estimator.name=pgt", "estimator.k=3"])
    async with open_reservoir(url, seed=5) as ring:
        straight = Trainer(cfg, ring)
        await run_steps(straight, 12)
    async with open_reservoir(url, seed=5) as ring:
        first = Trainer(cfg, ring)
        await run_steps(first, 5)
        saved = {k: np.array(v) for k, v in first.state_dict().items()}
    async with open_reservoir(url, seed=5) as ring:
        second = Trainer(cfg, ring)
        second.load_state_dict(saved)
        await run_steps(second, 7)
    assert second.params.tobytes() == straight.params.tobytes()
    assert second.ring_evals == straight.ring_evals


async def test_every_estimator_takes_a_step():
    for name in ("interface", "pgt", "spsa", "readout", "backprop"):
        cfg = load_config(None, [f"estimator.name={name}", "train.steps=2"])
        async with open_reservoir("sim://ring?nodes=6&inputs=4") as ring:
            trainer = Trainer(cfg, ring)
            start = trainer.params.copy()
            metrics = await trainer.train_step()
            assert np.isfinite(metrics["loss"])
            assert not np.array_equal(start, trainer.params), name


async def test_forward_batches_respect_the_device_max_batch():
    calls = []

    class Recording:
        def __init__(self, inner):
            self.inner, self.info = inner, inner.info

        async def forward(self, u):
            calls.append(len(u))
            return await self.inner.forward(u)

    cfg = load_config(None, ["estimator.name=pgt", "estimator.k=4", "data.batch_size=10"])
    async with open_reservoir("sim://ring?nodes=6&inputs=4&max_batch=16") as ring:
        trainer = Trainer(cfg, Recording(ring))
        await trainer.train_step()
    assert max(calls) <= 16 and sum(calls) == 8 * 10


async def test_a_checkpoint_of_another_model_is_refused():
    cfg = load_config(None, [])
    async with open_reservoir("sim://ring?nodes=6&inputs=4") as ring:
        state = Trainer(cfg, ring).state_dict()
    async with open_reservoir("sim://ring?nodes=7&inputs=4") as ring:
        other = Trainer(cfg, ring)
        try:
            other.load_state_dict(state)
        except ValueError as exc:
            assert "shape" in str(exc)
        else:
            raise AssertionError("a mismatched checkpoint was accepted")
