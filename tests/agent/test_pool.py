"""The device pool: the same estimate whichever device serves a probe, stragglers and
dead devices leave the run going, and the run suspends while no device is in service.

The devices are real Reservoirs (the simulated ring behind a trio-time delay), opened
by URL through ``open_pool``'s ``open_reservoir`` hook; timing runs on the autojump
clock.
"""

from __future__ import annotations

import contextlib
import urllib.parse

import numpy as np
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from pgt._config import ConfigError, load_config
from pgt._pool import PoolMismatch, open_pool
from pgt._trainer import Trainer
from pgt._trials import probe_groups
from pgt._estimators import Probe
from pgt.backends import ReservoirError, open_reservoir

RING = "sim://ring?nodes=6&inputs=4"


class SlowRing:
    """The simulated ring behind a delay: ``delay`` seconds, ``jitter`` more at random;
    from forward call ``slow_from`` on it takes ``slow_s``; from call ``dead_from`` on it
    raises; ``dead_until`` (trio time) brings it back."""

    def __init__(self, ring, q: dict[str, float], seed: int) -> None:
        self.ring, self.info = ring, ring.info
        self.delay, self.jitter = q.get("delay", 0.01), q.get("jitter", 0.0)
        self.slow_from, self.slow_s = q.get("slow_from", np.inf), q.get("slow_s", 1e6)
        self.dead_from, self.dead_until = q.get("dead_from", np.inf), q.get("dead_until", np.inf)
        self.rng = np.random.default_rng(seed)
        self.calls = 0

    async def forward(self, u):
        self.calls += 1
        dead = self.calls >= self.dead_from and trio.current_time() < self.dead_until
        if dead:
            await trio.sleep(0.001)
            raise ReservoirError("device on fire")
        delay = self.slow_s if self.calls >= self.slow_from else self.delay
        await trio.sleep(delay + self.jitter * self.rng.random())
        return await self.ring.forward(u)


@contextlib.asynccontextmanager
async def slow_reservoir(url: str, *, seed: int = 0, device: str = "cpu"):
    """``slow://?delay=..&jitter=..&slow_from=..&dead_from=..``: a SlowRing on RING."""
    q = {k: float(v[-1]) for k, v in urllib.parse.parse_qs(urllib.parse.urlparse(url).query).items()}
    async with open_reservoir(RING, seed=seed) as ring:
        yield SlowRing(ring, q, seed)


async def _train(cfg, urls, steps, **options):
    async with open_pool(urls, open_reservoir=slow_reservoir, **options) as pool:
        trainer = Trainer(cfg, pool)
        for _ in range(steps):
            await trainer.train_step()
        return trainer, pool


def test_each_pair_of_a_central_difference_is_one_group():
    probes = [Probe(-1, 0.0, "none"), Probe(0, 1.0, "inputs"), Probe(0, -1.0, "inputs"),
              Probe(1, 1.0, "inputs"), Probe(1, -1.0, "inputs")]
    assert probe_groups(probes) == [[0], [1, 2], [3, 4]]
    one_sided = [Probe(-1, 0.0, "none"), Probe(0, 1.0, "params"), Probe(1, 1.0, "params")]
    assert probe_groups(one_sided) == [[0], [1], [2]]


@pytest.mark.parametrize("estimator", ["interface", "pgt"])
async def test_one_and_four_noise_free_devices_give_identical_parameters(estimator,
                                                                         autojump_clock):
    cfg = load_config(None, [f"estimator.name={estimator}", "estimator.k=3", "train.steps=6"])
    one, _ = await _train(cfg, ["slow://?delay=0.01"], 6)
    # Four devices with random latencies: trials finish in a different order every step.
    urls = ["slow://?delay=0.01&jitter=0.02" for _ in range(4)]
    four, pool = await _train(cfg, urls, 6)
    assert one.params.tobytes() == four.params.tobytes()
    assert one.ring_evals == four.ring_evals
    assert sum(s.trials for s in pool.stats) == 6 * len(probe_groups(four.estimator.ask({}, 0)))
    assert all(s.trials > 0 for s in pool.stats)


async def test_the_pool_matches_the_batched_single_device_path(autojump_clock):
    cfg = load_config(None, ["estimator.k=2", "train.steps=3"])
    async with open_reservoir(RING) as ring:
        batched = Trainer(cfg, ring)
        for _ in range(3):
            await batched.train_step()
    pooled, _ = await _train(cfg, ["slow://?delay=0.01"] * 2, 3)
    np.testing.assert_allclose(pooled.params, batched.params, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("form", ["central", "one-sided"])
async def test_pgt_through_the_pool_sums_early_and_matches_the_batched_path(form,
                                                                           autojump_clock):
    """tell_early sums chunks while trials land; the estimate keeps the batched bits."""
    cfg = load_config(None, ["estimator.name=pgt", "estimator.k=9", f"estimator.form={form}",
                             "train.steps=3"])
    async with open_reservoir(RING) as ring:
        batched = Trainer(cfg, ring)
        for _ in range(3):
            await batched.train_step()
    progress: dict[int, list[int]] = {}   # step -> how far the sum was after each landing
    async with open_pool(["slow://?delay=0.01&jitter=0.005"] * 3,
                         open_reservoir=slow_reservoir) as pool:
        pooled = Trainer(cfg, pool)
        tell_early = pooled.estimator.tell_early

        def spy(state, step, probes, ev):
            tell_early(state, step, probes, ev)
            progress.setdefault(step, []).append(ev.early[0] if ev.early else 0)

        pooled.estimator.tell_early = spy
        for _ in range(3):
            await pooled.train_step()
    assert pooled.params.tobytes() == batched.params.tobytes()
    # Three rings, nine pairs: the first chunk of four is summed a round before the last
    # trials land, and tell finds every direction summed.
    for marks in progress.values():
        assert marks[-1] == 9 and len(marks) >= 2 and marks[-2] >= 4


async def test_a_straggler_does_not_hold_a_step_beyond_its_deadline(autojump_clock):
    cfg = load_config(None, ["estimator.k=3", "train.steps=4"])
    urls = ["slow://?delay=0.01", "slow://?delay=0.01&slow_from=3&slow_s=1000"]
    with capture_logs() as logs:
        async with open_pool(urls, open_reservoir=slow_reservoir, trial_timeout_s=0.5,
                             cooldown_s=5.0) as pool:
            trainer = Trainer(cfg, pool)
            for _ in range(4):
                t0 = trio.current_time()
                await trainer.train_step()
                # 4 trials of 0.01-0.02 s; one waits out its 0.5 s deadline, then reruns.
                assert trio.current_time() - t0 < 0.5 + 0.2
    assert trainer.step == 4
    assert pool.stats[1].timeouts >= 1
    redispatched = [e for e in logs if e["event"] == "trial_redispatched"]
    assert redispatched and all(e["device"].startswith("1:") for e in redispatched)
    # Every group was finished exactly once: the cancelled attempts counted nothing.
    assert sum(s.trials for s in pool.stats) == 4 * 4
    assert trainer.ring_evals == 4 * 7 * cfg.data.batch_size


async def test_a_device_that_dies_mid_run_leaves_the_run_going_on_the_others(autojump_clock):
    # Long enough for the dead device, benched 0.05 s after each failure, to fail 3 times
    # whichever trials it happens to be handed.
    cfg = load_config(None, ["estimator.k=3", "train.steps=30"])
    urls = ["slow://?delay=0.01", "slow://?delay=0.01&dead_from=5", "slow://?delay=0.01"]
    with capture_logs() as logs:
        trainer, pool = await _train(cfg, urls, 30, cooldown_s=0.05, quarantine_after=3)
    assert trainer.step == 30 and np.isfinite(trainer.params).all()
    assert pool.stats[1].quarantined and not pool.health.quarantined
    events = [e["event"] for e in logs]
    assert events.count("device_quarantined") == 1
    assert sum(s.trials for s in pool.stats) == 30 * 4


async def test_the_pool_is_unhealthy_while_every_device_is_down_and_recovers(autojump_clock):
    cfg = load_config(None, ["estimator.k=1", "train.steps=3"])
    urls = ["slow://?delay=0.01&dead_from=1&dead_until=30"] * 2
    with capture_logs() as logs:
        async with open_pool(urls, open_reservoir=slow_reservoir, cooldown_s=1.0,
                             quarantine_after=2) as pool:
            trainer = Trainer(cfg, pool)
            async with trio.open_nursery() as nursery:
                seen = []

                async def watch():
                    await pool.health.wait_until(quarantined=True)
                    seen.append(("down", trio.current_time()))
                    await pool.health.wait_until(quarantined=False)
                    seen.append(("up", trio.current_time()))

                nursery.start_soon(watch)
                await trainer.train_step()
    assert [s for s, _ in seen] == ["down", "up"] and seen[1][1] >= 30
    events = [e["event"] for e in logs]
    assert events.count("device_quarantined") == 2 and events.count("device_recovered") >= 1


async def test_a_batch_of_first_trials_is_on_every_device_before_the_host_prepares_more(
        autojump_clock):
    n_devices, n_trials = 4, 12
    async with open_pool(["slow://?delay=0.01"] * n_devices, open_reservoir=slow_reservoir) as pool:
        await trio.testing.wait_all_tasks_blocked()   # the workers wait for trials, as in a run
        u = np.zeros((3, pool.info.n_inputs))
        calls_when_asked, finished = [], []

        def prepare_many(i):
            calls_when_asked.append([d.calls for d in pool.devices])
            return [[u]] * (n_devices if i == 0 else 2)

        await pool.map_trials(n_trials, prepare_many=prepare_many,
                              finish_many=lambda items: finished.extend(i for i, _ in items))
    # Asked for trials 0-3 first; before it was asked for more, each device had one.
    assert calls_when_asked[0] == [0] * n_devices
    assert calls_when_asked[1] == [1] * n_devices
    assert sorted(finished) == list(range(n_trials))
    assert sum(s.trials for s in pool.stats) == n_trials


async def test_an_error_while_preparing_comes_out_as_itself_and_the_pool_goes_on(autojump_clock):
    async with open_pool(["slow://?delay=0.01"] * 2, open_reservoir=slow_reservoir) as pool:
        u = np.zeros((3, pool.info.n_inputs))

        def prepare(i):
            if i == 3:
                raise ValueError("trial 3: inputs have the wrong shape")
            return [u]

        with pytest.raises(ValueError, match="trial 3"):
            await pool.map_trials(6, prepare, lambda i, features: None)
        for many in ([], [[u]] * 7):   # no trial, or more than are left
            with pytest.raises(ValueError, match=f"gave {len(many)} trials"):
                await pool.map_trials(6, prepare_many=lambda i, many=many: many,
                                      finish_many=lambda items: None)
        out = await pool.forward(np.zeros((8, pool.info.n_inputs)))
    assert out.shape == (8, pool.info.n_features)


async def test_devices_that_disagree_on_sizes_are_refused():
    with pytest.raises(PoolMismatch, match="disagree"):
        async with open_pool(["sim://ring?inputs=4", "sim://ring?inputs=8"]):
            pass


def test_reservoir_urls_is_a_list_of_strings():
    cfg = load_config(None, ['reservoir.urls=["sim://ring", "emu://?latency_ms=1"]'])
    assert cfg.reservoir.urls == ["sim://ring", "emu://?latency_ms=1"]
    with pytest.raises(ConfigError, match="reservoir.urls"):
        load_config(None, ["reservoir.urls=3"])


def test_pgt_train_on_two_rings_with_repeated_backend(tmp_path, capsys):
    from pgt._logging import read_events
    from pgt.cli import main

    code = main(["train", "--backend", RING, "--backend", RING, "--run-dir", str(tmp_path),
                 "--name", "pool", "--quiet", "--set", "train.steps=3",
                 "--set", "train.eval_every=3"])
    assert code == 0, capsys.readouterr().err
    events = list(read_events(tmp_path / "pool" / "events.jsonl"))
    start = next(e for e in events if e["event"] == "run_start")
    assert start["reservoir"] == [RING, RING]
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3]
    assert "test accuracy" in capsys.readouterr().out
