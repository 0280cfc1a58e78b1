"""The conformance suite every reservoir backend passes.

A backend joins by adding a factory to BACKENDS: an async context manager that
yields an opened reservoir. Each test speaks only the Reservoir protocol.
"""

import contextlib

import numpy as np
import pytest
import trio

from pgt.backends import Reservoir, ReservoirURLError, open_reservoir
from pgt.backends._emulate import serve_pty, serve_tcp
from pgt.backends._emulator import EmulatedDevice, EmulatorConfig
from pgt.kernels import RingParams


@contextlib.asynccontextmanager
async def _served(serve, url):
    """An emulated microcontroller served on a pty or loopback TCP, opened by URL."""
    device = EmulatedDevice(EmulatorConfig(ring=RingParams(nodes=6), n_inputs=4, max_batch=16))
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve, device)
        async with open_reservoir(url(address), seed=1) as reservoir:
            yield reservoir
        nursery.cancel_scope.cancel()


BACKENDS = {
    "sim": lambda: open_reservoir("sim://ring", seed=1),
    "sim-small": lambda: open_reservoir("sim://ring?nodes=5&inputs=3&max_batch=8", seed=1),
    "sim-noisy": lambda: open_reservoir("sim://ring?noise=0.02&drift=0.01", seed=1),
    "identity": lambda: open_reservoir("sim://identity?inputs=5&max_batch=8", seed=1),
    "emu": lambda: open_reservoir("emu://", seed=1),
    "emu-sampled": lambda: open_reservoir(
        "emu://?inputs=5&nodes=7&max_batch=8&bits=12&sample_steps=2-4&sample_nodes=0,3,6", seed=1),
    "emu-faulty": lambda: open_reservoir(
        "emu://?inputs=3&nodes=4&max_batch=8&bits=8&faults=corrupt=0.003;drop=0.002;"
        "truncate=0.05;duplicate=0.1&timeout_ms=30", seed=1),
    "serial-pty": lambda: _served(serve_pty, lambda path: f"serial://{path}?baud=115200"),
    "socket": lambda: _served(serve_tcp, lambda addr: f"socket://{addr[0]}:{addr[1]}"),
}
DETERMINISTIC = {"sim", "sim-small", "identity", "emu", "emu-sampled", "emu-faulty",
                 "serial-pty", "socket"}


@pytest.fixture(params=sorted(BACKENDS))
async def device(request):
    async with BACKENDS[request.param]() as reservoir:
        reservoir.test_id = request.param
        yield reservoir


def inputs(reservoir, batch, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (batch, reservoir.info.n_inputs))


async def test_speaks_the_protocol(device):
    assert isinstance(device, Reservoir)
    info = device.info
    assert info.n_inputs >= 1 and info.n_features >= 1 and info.max_batch >= 1
    assert isinstance(info.name, str) and info.name


async def test_forward_returns_finite_features_of_the_declared_shape(device):
    for batch in (1, min(5, device.info.max_batch), device.info.max_batch if device.info.max_batch <= 64 else 64):
        feats = np.asarray(await device.forward(inputs(device, batch)))
        assert feats.shape == (batch, device.info.n_features)
        assert np.isfinite(feats).all()


async def test_samples_in_a_batch_do_not_interact(device):
    if device.test_id not in DETERMINISTIC:
        pytest.skip("noisy device")
    u = inputs(device, min(4, device.info.max_batch))
    whole = np.asarray(await device.forward(u))
    single = np.asarray(await device.forward(u[1:2]))
    np.testing.assert_allclose(single[0], whole[1], rtol=1e-9, atol=1e-12)


async def test_inputs_change_features(device):
    a = np.asarray(await device.forward(np.full((1, device.info.n_inputs), 0.5)))
    b = np.asarray(await device.forward(np.full((1, device.info.n_inputs), -0.5)))
    assert not np.allclose(a, b)


@pytest.mark.parametrize("problem", ["width", "range", "empty", "too_many", "rank"])
async def test_bad_inputs_are_rejected_with_a_named_reason(device, problem):
    n = device.info.n_inputs
    bad = {
        "width": np.zeros((2, n + 1)),
        "range": np.full((2, n), 1.5),
        "empty": np.zeros((0, n)),
        "too_many": np.zeros((device.info.max_batch + 1, n)),
        "rank": np.zeros(n),
    }[problem]
    with pytest.raises(ValueError, match=device.info.name):
        await device.forward(bad)
    # the device keeps working after rejecting bad input
    assert np.asarray(await device.forward(inputs(device, 1))).shape == (1, device.info.n_features)


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("nope://ring", "nope"),
        ("sim://lake", "lake"),
        ("sim://ring?nodez=3", "nodez"),
        ("sim://ring?nodes=many", "nodes"),
        ("sim://ring?gain=-1", "gain"),
    ],
)
async def test_bad_urls_are_one_line_errors(url, named):
    with pytest.raises(ReservoirURLError, match=named) as info:
        async with open_reservoir(url):
            pass
    assert "\n" not in str(info.value)


async def test_the_ring_device_can_be_named_in_the_url():
    async with open_reservoir("sim://ring?device=cpu&fused=0") as ring:
        assert np.asarray(await ring.forward(np.zeros((1, ring.info.n_inputs)))).shape[0] == 1
    with pytest.raises(ReservoirURLError, match="tpu"):
        async with open_reservoir("sim://ring?device=tpu"):
            pass
