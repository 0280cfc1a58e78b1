"""The emulator reports every fault it injects, and the host's log accounts for each one.

``EmulatedDevice.injected`` names, for each fault, the frame it hit (type, seq,
trial id); ``unseen_faults`` compares that list with the host's events (captured
with structlog.testing.capture_logs) so a soak can check that nothing injected went
unnoticed. Time runs on the autojump clock except over TCP.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import trio
from structlog.testing import capture_logs

from pgt.backends import EmulatorConfig, FaultSpec, emulate, open_reservoir
from pgt.backends._faults import FAULT_KINDS, FaultyLink, InjectedFault, unseen_faults
from pgt.backends._messages import HelloRequest, Ping
from pgt.backends._wire import encode_frame
from pgt.kernels import RingParams
from tests.backends.test_faults import SMALL, assert_each_trial_once, batches, clean

EVERYTHING = ("corrupt=0.01;drop=0.005;truncate=0.05;duplicate=0.2;stall=0.05;stall_s=5;"
              "reset_every=13;unplug_at=30;unplug_s=2")


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_every_injected_fault_is_seen_by_the_host(autojump_clock, seed):
    inputs = batches(40)
    want = await clean(inputs)
    with capture_logs() as logs:
        async with open_reservoir(f"{SMALL}&faults={EVERYTHING};seed={seed}", seed=1) as device:
            got = [await device.forward(u) for u in inputs]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    assert_each_trial_once(logs, len(inputs))
    injected = list(device.emulator.injected)
    assert {f.kind for f in injected} == set(FAULT_KINDS)   # this run exercises every kind
    assert Counter(f.kind for f in injected) == device.emulator.fault_counts
    assert unseen_faults(injected, logs) == []
    assert all(f.seq is not None and f.frame for f in injected)


def test_unseen_faults_names_what_the_host_did_not_log():
    corrupted = InjectedFault("request_damaged", "FORWARD", 5, 1, "1 byte corrupted")
    reset = InjectedFault("reset", "FORWARD", 9, 3, "watchdog")
    retry = {"event": "device_retry", "seq": 5, "trial_id": 1, "reason": "timeout"}
    other = {"event": "device_retry", "seq": 5, "trial_id": 2, "reason": "timeout"}
    assert unseen_faults([corrupted], [other]) == [corrupted]   # another trial's seq 5
    assert unseen_faults([corrupted], [retry]) == []
    parked = {"event": "device_fault", "seq": 9, "trial_id": 3, "error": "DeviceRefused: PARKED"}
    assert unseen_faults([reset], [parked]) == [reset]   # no reconnect reported the watchdog
    back = {"event": "device_reconnect", "reason": "parked", "reset_cause": "watchdog"}
    assert unseen_faults([reset], [parked, back]) == []
    assert unseen_faults([reset, reset], [parked, back]) == [reset]   # one reconnect each


def test_damaged_request_bytes_are_named_after_the_frame_they_belonged_to():
    faults: list[InjectedFault] = []
    link = FaultyLink(None, FaultSpec(), np.random.default_rng(0), 0.0, Counter(), faults.append)
    ping, hello = encode_frame(Ping(1), seq=10, trial_id=0), encode_frame(HelloRequest(), seq=11)
    stream = b"\x00" + ping + hello
    corrupted, dropped = np.zeros(len(stream), bool), np.zeros(len(stream), bool)
    corrupted[0] = True                       # the flush 0x00: counts for the next frame
    dropped[len(ping)] = True                 # the PING's delimiter
    corrupted[len(ping) + 3] = True           # a byte of the HELLO
    cut = len(ping) + 2                       # the HELLO arrives in two pieces
    link._name_requests(stream[:cut], corrupted[:cut], dropped[:cut])
    assert [(f.frame, f.seq, f.detail) for f in faults] == [
        ("PING", 10, "1 byte corrupted, 1 byte dropped")]
    link._name_requests(stream[cut:], corrupted[cut:], dropped[cut:])
    assert [(f.kind, f.frame, f.seq, f.trial_id) for f in faults][1:] == [
        ("request_damaged", "HELLO", 11, 0)]


@pytest.mark.parametrize(("flush", "reported"), [
    (b"\x00", True),          # corrupted, the flush 0x00 is a byte that joins the PING
    (b"\x00\x00", False),     # ... unless an intact 0x00 follows: junk of its own
])
def test_a_damaged_empty_frame_counts_only_when_it_joins_the_next(flush, reported):
    faults: list[InjectedFault] = []
    link = FaultyLink(None, FaultSpec(), np.random.default_rng(0), 0.0, Counter(), faults.append)
    stream = flush + encode_frame(Ping(1), seq=10)
    corrupted = np.zeros(len(stream), bool)
    corrupted[0] = True
    link._name_requests(stream, corrupted, np.zeros(len(stream), bool))
    assert [f.seq for f in faults] == ([10] if reported else [])
    dropped = np.zeros(len(stream), bool)
    dropped[0] = True          # a dropped flush 0x00 loses nothing
    link._name_requests(stream, np.zeros(len(stream), bool), dropped)
    assert len(faults) == reported


def test_a_reply_without_its_final_zero_is_seen_with_the_next_frame():
    faults: list[InjectedFault] = []
    link = FaultyLink(None, FaultSpec(), np.random.default_rng(0), 0.0, Counter(), faults.append)
    hello, ping = encode_frame(HelloRequest(), seq=3), encode_frame(Ping(1), seq=4, trial_id=6)
    cut = InjectedFault("truncated", "HELLO", 3, 0, "5 of 14 bytes sent")
    link._settle_faults(hello, [cut], complete=False)
    assert faults == []                       # not at the host yet
    link._settle_faults(ping, [], complete=True)
    assert faults == [InjectedFault("truncated", "HELLO", 3, 0, "5 of 14 bytes sent", seen_with=(4, 6))]
    assert unseen_faults(faults, [{"event": "device_garbled_frame", "seq": 4, "trial_id": 6}]) == []
    link._settle_faults(hello, [cut], complete=False)
    link.close()                              # the link ended with it unfinished
    assert faults[-1].incomplete and "link closed" in str(faults[-1])
    assert unseen_faults(faults[-1:], []) == []


async def test_emulate_prints_a_line_per_injected_fault_and_a_summary():
    lines: list[str] = []
    config = EmulatorConfig(ring=RingParams(nodes=3), n_inputs=4, max_batch=4,
                            faults=FaultSpec(duplicate=1.0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: emulate(config, tcp_port=0, announce=lines.append))
        with trio.fail_after(10):
            while not lines:
                await trio.sleep(0.01)
        url = lines[0].split(" on ")[1]
        async with open_reservoir(f"{url}?log_trials=1") as device:
            for u in batches(3):
                await device.forward(u)
        nursery.cancel_scope.cancel()
    faults = [line for line in lines if line.startswith("injected duplicated on ")]
    # one per reply: HELLO, CONFIGURE, three FORWARDs and the SAFE at close
    assert len(faults) == 6 and any(" RESULT seq " in line for line in faults)
    assert lines[-1] == "injected faults: 6 duplicated"
