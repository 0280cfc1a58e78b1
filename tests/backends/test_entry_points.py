"""Reservoir URL schemes from other packages, through the ``pgt.reservoirs`` entry points.

Each test installs a small distribution for real: a package and its ``*.dist-info``
folder (METADATA, entry_points.txt) in tmp_path, put on sys.path, so
importlib.metadata finds it exactly as it finds a pip-installed plugin.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pgt.backends import ReservoirError, ReservoirURLError, open_reservoir
from pgt.cli import main

PLUGIN_MODULES = ("myring_plugin", "sim_plugin", "broken_plugin", "forms_plugin")

MYRING = '''
import contextlib
import urllib.parse

import numpy as np

from pgt.backends import ReservoirInfo

N_INPUTS, N_FEATURES = 8, 32
W = np.random.default_rng(1234).normal(size=(N_INPUTS, N_FEATURES)) / np.sqrt(N_INPUTS)
EVENTS = []


class MyRing:
    """features = tanh(scale * u @ W): a fixed nonlinear map of the inputs."""

    def __init__(self, scale, opened_with):
        self.scale, self.opened_with = scale, opened_with
        self.info = ReservoirInfo(name="myring", n_inputs=N_INPUTS, n_features=N_FEATURES,
                                  max_batch=64)

    async def forward(self, u):
        u = np.asarray(u, dtype=np.float64)
        if u.ndim != 2 or u.shape[1] != N_INPUTS or not 1 <= len(u) <= self.info.max_batch:
            raise ValueError(f"myring: bad input shape {u.shape}")
        return np.tanh(self.scale * u @ W)


@contextlib.asynccontextmanager
async def open_myring(url, *, seed, device):
    query = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)
    EVENTS.append("open")
    try:
        yield MyRing(float(query.get("scale", ["1"])[0]), (url, seed, device))
    finally:
        EVENTS.append("close")
'''

SIM = '''
def open_fake_sim(url, *, seed, device):
    raise AssertionError("a plugin must not replace the built-in sim://")
'''

FORMS = '''
import numpy as np

from pgt.backends import ReservoirError, ReservoirInfo

EVENTS = []


class Plain:
    info = ReservoirInfo(name="plain", n_inputs=2, n_features=2, max_batch=4)

    async def forward(self, u):
        return np.tanh(np.asarray(u))


class SelfEntering(Plain):
    async def __aenter__(self):           # returns None: the object itself is the reservoir
        EVENTS.append("enter")

    async def __aexit__(self, *exc):
        EVENTS.append("exit")


def plain(url, *, seed, device):
    return Plain()


async def coro(url, *, seed, device):
    return SelfEntering()


def no_forward(url, *, seed, device):
    return type("NoForward", (), {"info": Plain.info})()


def bad_info(url, *, seed, device):
    return type("BadInfo", (), {"info": object(), "forward": Plain.forward})()


def async_gen(url, *, seed, device):
    async def gen():
        yield Plain()
    return gen()


def raises(url, *, seed, device):
    raise OSError("no ring on the bench\\nsecond line")


def raises_own(url, *, seed, device):
    raise ReservoirError("forms: the ring is busy")
'''


def _install(root: Path, dist: str, module: str, source: str, entry_points: dict[str, str]) -> None:
    """A distribution ``dist`` 0.1 with one module and ``pgt.reservoirs`` entry points."""
    (root / module).mkdir()
    (root / module / "__init__.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[pgt.reservoirs]\n{lines}")


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """A site folder on sys.path; the plugin modules are forgotten afterwards."""
    site = tmp_path / "site"
    site.mkdir()
    _install(site, "myring-plugin", "myring_plugin", MYRING,
             {"myring": "myring_plugin:open_myring"})
    monkeypatch.syspath_prepend(str(site))   # also invalidates the import caches
    yield site
    for name in list(sys.modules):
        if name.split(".")[0] in PLUGIN_MODULES:
            del sys.modules[name]


async def test_a_plugin_scheme_opens_the_plugins_reservoir(plugins):
    async with open_reservoir("myring://x?scale=2", seed=3, device="cpu") as ring:
        plugin = sys.modules["myring_plugin"]
        assert ring.info.name == "myring"
        assert ring.opened_with == ("myring://x?scale=2", 3, "cpu")
        u = np.random.default_rng(0).uniform(-1, 1, (5, ring.info.n_inputs))
        feats = await ring.forward(u)
        assert feats.shape == (5, ring.info.n_features)
        np.testing.assert_array_equal(feats, np.tanh(2 * u @ plugin.W))
        np.testing.assert_array_equal(await ring.forward(u), feats)   # deterministic
        assert plugin.EVENTS == ["open"]
    assert plugin.EVENTS == ["open", "close"]


async def test_an_unknown_scheme_lists_the_plugins(plugins):
    with pytest.raises(ReservoirURLError, match="nope") as info:
        async with open_reservoir("nope://x"):
            pass
    message = str(info.value)
    assert "\n" not in message
    assert "known: sim, serial, socket, emu, rfc2217, myring (myring-plugin 0.1)" in message


async def test_a_broken_entry_point_is_a_one_line_error_naming_it(plugins):
    _install(plugins, "broken-plugin", "broken_plugin", "",
             {"broken": "no_such_module:open_it"})
    with pytest.raises(ReservoirURLError) as info:
        async with open_reservoir("broken://x"):
            pass
    message = str(info.value)
    assert "\n" not in message
    for part in ("'broken'", "broken-plugin 0.1", "no_such_module:open_it", "ModuleNotFoundError"):
        assert part in message
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


async def test_a_plugin_cannot_replace_a_builtin_scheme(plugins):
    _install(plugins, "sim-plugin", "sim_plugin", SIM, {"sim": "sim_plugin:open_fake_sim"})
    async with open_reservoir("sim://ring?nodes=5&inputs=3", seed=1) as ring:
        assert ring.info.name == "sim-ring"
        assert (await ring.forward(np.zeros((1, 3)))).shape == (1, 15)
    assert "sim_plugin" not in sys.modules
    with pytest.raises(ReservoirURLError) as info:
        async with open_reservoir("nope://x"):
            pass
    assert "sim-plugin" not in str(info.value)


async def test_a_scheme_registered_twice_names_both_distributions(plugins):
    _install(plugins, "forms-plugin", "forms_plugin", FORMS, {"myring": "forms_plugin:plain"})
    with pytest.raises(ReservoirURLError, match="several distributions") as info:
        async with open_reservoir("myring://x"):
            pass
    assert "forms-plugin 0.1" in str(info.value) and "myring-plugin 0.1" in str(info.value)


FORM_ENTRY_POINTS = {name.replace("_", "-"): f"forms_plugin:{name}" for name in (
    "plain", "coro", "no_forward", "bad_info", "async_gen", "raises", "raises_own")}
FORM_ENTRY_POINTS["my_ring"] = "forms_plugin:plain"   # no URL has this scheme: not listed


async def test_an_opener_may_return_the_reservoir_or_an_awaitable(plugins):
    _install(plugins, "forms-plugin", "forms_plugin", FORMS, FORM_ENTRY_POINTS)
    async with open_reservoir("plain://") as ring:
        assert ring.info.name == "plain"
        np.testing.assert_array_equal(await ring.forward(np.ones((1, 2))), np.tanh(np.ones((1, 2))))
    async with open_reservoir("coro://") as ring:
        assert type(ring).__name__ == "SelfEntering"
        assert sys.modules["forms_plugin"].EVENTS == ["enter"]
    assert sys.modules["forms_plugin"].EVENTS == ["enter", "exit"]
    async with open_reservoir("PLAIN://") as ring:     # schemes are not case-sensitive
        assert ring.info.name == "plain"
    with pytest.raises(ReservoirURLError, match="raises-own") as info:
        async with open_reservoir("nope://"):
            pass
    assert "my_ring" not in str(info.value)


@pytest.mark.parametrize(("scheme", "error", "named"), [
    ("no-forward", ReservoirError, "'NoForward', not a reservoir: no forward$"),
    ("bad-info", ReservoirError, "'BadInfo', not a reservoir: info has no name$"),
    ("async-gen", ReservoirError, "asynccontextmanager missing"),
    ("raises", ReservoirError, "failed to open: OSError: no ring on the bench"),
    ("raises-own", ReservoirError, "^forms: the ring is busy$"),
])
async def test_a_failing_opener_is_a_one_line_error_naming_the_plugin(plugins, scheme, error,
                                                                      named):
    _install(plugins, "forms-plugin", "forms_plugin", FORMS, FORM_ENTRY_POINTS)
    with pytest.raises(error, match=named) as info:
        async with open_reservoir(f"{scheme}://x"):
            pass
    message = str(info.value)
    assert "\n" not in message
    if scheme != "raises-own":     # a plugin's own ReservoirError passes through unchanged
        assert f"plugin '{scheme}' (forms-plugin 0.1)" in message
    if scheme == "raises":
        assert isinstance(info.value.__cause__, OSError)


def test_train_resume_and_eval_on_a_plugin_scheme(plugins, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "r"
    assert main(["train", "--backend", "myring://x", "--set", "train.steps=6",
                 "--set", "train.eval_every=3", "--set", "train.checkpoint_every=3",
                 "--run-dir", str(tmp_path / "runs"), "--name", "r", "--quiet"]) == 0
    assert 'url = "myring://x"' in (run_dir / "config.toml").read_text()
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-3", "step-6"]
    shutil.copytree(checkpoints / "step-6", tmp_path / "step-6")
    shutil.rmtree(checkpoints / "step-6")

    assert main(["resume", str(run_dir), "--quiet"]) == 0   # reopens myring:// from config.toml
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-3", "step-6"]
    resumed = (checkpoints / "step-6" / "arrays.npz").read_bytes()
    assert resumed == (tmp_path / "step-6" / "arrays.npz").read_bytes()   # bit-exact

    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 0
    assert "(step 6," in capsys.readouterr().out
