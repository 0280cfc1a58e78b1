"""The device client survives the emulator's faults; every trial is counted once.

Each test drives the emulated microcontroller (a real protocol peer on an in-memory
link) with faults switched on, under trio's autojump clock, and compares what
``forward`` returns with a clean device's answers.
"""

import numpy as np
import pytest
import trio
from structlog.testing import capture_logs

from pgt.backends import DeviceUnavailable, open_reservoir

SMALL = "emu://?inputs=4&nodes=5&max_batch=4&bits=12&log_trials=1"


def batches(n, width=4, batch=3):
    rng = np.random.default_rng(7)
    return [rng.uniform(-1, 1, (batch, width)) for _ in range(n)]


async def run_all(url, inputs):
    async with open_reservoir(url, seed=1) as device:
        out = [await device.forward(u) for u in inputs]
        return out, device


def events(logs, name):
    return [e for e in logs if e["event"] == name]


async def clean(inputs):
    out, _ = await run_all(SMALL, inputs)
    return out


def assert_each_trial_once(logs, n):
    ids = [e["trial_id"] for e in events(logs, "trial_accepted")]
    assert sorted(ids) == list(range(1, n + 1))


async def run_faulty_matching_clean(faults, inputs):
    """Run ``inputs`` on a device with ``faults``; assert it answers exactly as a clean
    device does and accepts each trial once. Returns (logs, device)."""
    want = await clean(inputs)
    with capture_logs() as logs:
        got, device = await run_all(f"{SMALL}&faults={faults}", inputs)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert_each_trial_once(logs, len(inputs))
    return logs, device


@pytest.mark.parametrize("faults", [
    "corrupt=0.01", "drop=0.01", "truncate=0.1", "duplicate=0.3", "stall=0.1;stall_s=5",
    "corrupt=0.005;drop=0.005;truncate=0.05;duplicate=0.1;stall=0.05",
])
async def test_byte_and_frame_faults_are_retried_to_the_clean_answer(autojump_clock, faults):
    inputs = batches(40)
    logs, device = await run_faulty_matching_clean(f"{faults};seed=3", inputs)
    seen = {e["event"] for e in logs}
    assert seen & {"device_retry", "device_fault", "device_stale_reply", "device_garbled_frame"}
    # A resend is replayed, not re-run: the ring runs again only for a trial whose
    # link was lost (re-sent after the reconnect as a new request).
    driven = device.emulator.stats["forwards_driven"]
    assert len(inputs) <= driven <= len(inputs) + len(events(logs, "device_fault"))


async def test_a_reset_is_verified_reported_and_its_trial_resent(autojump_clock):
    inputs = batches(12)
    logs, device = await run_faulty_matching_clean("reset_every=5", inputs)
    resets = [e for e in events(logs, "device_reconnect") if e["reset_cause"] == "watchdog"]
    assert len(resets) == device.emulator.stats["resets"] == 2


async def test_an_unplugged_device_is_reconnected_with_backoff(autojump_clock):
    logs, _ = await run_faulty_matching_clean("unplug_at=4;unplug_s=3", batches(10))
    assert events(logs, "device_fault")
    [back] = events(logs, "device_reconnect")
    assert back["reset_cause"] == "power_on"


async def test_a_device_that_keeps_failing_is_quarantined_and_recovers(autojump_clock):
    url = f"{SMALL}&quarantine_after=3&quarantine_s=20&faults=unplug_at=2;unplug_s=60"
    with capture_logs() as logs:
        async with open_reservoir(url, seed=1) as device:
            await device.forward(batches(1)[0])
            async with trio.open_nursery() as nursery:
                nursery.start_soon(device.forward, batches(1)[0])
                await device.health.wait_until(quarantined=True)
                quarantined_at = trio.current_time()
                await device.health.wait_until(quarantined=False)
            assert trio.current_time() - quarantined_at >= 20
    names = [e["event"] for e in logs]
    assert names.index("device_quarantined") < names.index("device_recovered")
    assert_each_trial_once(logs, 2)


async def test_a_firmware_that_never_answers_is_a_clear_error(autojump_clock):
    # every byte to and from the device is lost: nothing ever answers HELLO
    with pytest.raises(DeviceUnavailable, match="no valid reply to HELLO"):
        async with open_reservoir(f"{SMALL}&open_timeout_s=5&faults=drop=1"):
            pass


async def test_idle_links_are_pinged(autojump_clock):
    async with open_reservoir(SMALL) as device:
        await trio.sleep(10)
        assert device.emulator.stats["replayed"] == 0
        await device.forward(batches(1)[0])


async def test_a_run_suspends_while_its_device_is_quarantined_and_resumes(autojump_clock, tmp_path):
    import json

    from pgt._config import load_config
    from pgt._runloop import run_training

    url = (f"{SMALL}&quarantine_after=2&quarantine_s=30&batch=8"
           "&faults=unplug_at=6;unplug_s=100")
    cfg = load_config(None, ["train.steps=3", "train.eval_every=3", "train.checkpoint_every=0",
                             "data.batch_size=4", "estimator.k=1", f'reservoir.url="{url}"'])
    result = await run_training(cfg, tmp_path / "run", resume=False)
    assert result["reason"] == "finished"
    logged = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    names = [e["event"] for e in logged]
    order = ["device_fault", "device_quarantined", "run_suspended", "device_recovered",
             "run_resumed_after_suspend", "run_stop"]
    assert [names.index(n) for n in order] == sorted(names.index(n) for n in order)
    resumed = logged[names.index("run_resumed_after_suspend")]
    assert resumed["suspended_s"] >= 30
    ids = [e["trial_id"] for e in logged if e["event"] == "trial_accepted"]
    assert sorted(ids) == list(range(1, len(ids) + 1))
