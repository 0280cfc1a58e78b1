"""``open_reservoir(url)``: from a URL to an opened backend.

The built-in schemes are sim, serial, socket, emu and rfc2217. Other packages add schemes
through the entry-point group ``pgt.reservoirs``: the entry point's name is the
scheme, its value an ``opener(url: str, *, seed: int, device: str)`` returning (or,
``async def``, returning an awaitable of) an async context manager that yields the
Reservoir, or the Reservoir itself. Entry points are read when a URL is opened, and
cannot replace a built-in scheme; backends/_plugins.py has the whole contract.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import AsyncIterator

from pgt.backends._protocol import Reservoir, ReservoirURLError
from pgt.backends._sim import SimRing
from pgt.kernels import RingParams

BUILTIN_SCHEMES = ("sim", "serial", "socket", "emu", "rfc2217")
_SIM_EXTRA = {"inputs": int, "max_batch": int, "device": str, "fused": int, "preset": str}


def _convert(key: str, raw: str, kind: type):
    try:
        return kind(raw)
    except ValueError:
        raise ReservoirURLError(
            f"reservoir URL: {key}={raw!r} is not a valid {kind.__name__}"
        ) from None


def _open_sim(parsed: urllib.parse.ParseResult, seed: int, device: str) -> SimRing:
    if parsed.netloc == "identity":  # the memoryless control: features = inputs
        from pgt.backends._identity import open_identity
        return open_identity(parsed)
    if parsed.netloc not in ("ring", ""):
        raise ReservoirURLError(f"reservoir URL: unknown simulator {parsed.netloc!r} (try sim://ring)")
    known = {**RingParams.field_types(), **_SIM_EXTRA}
    ring_kw, extra = {}, {}
    for key, values in urllib.parse.parse_qs(parsed.query, keep_blank_values=True).items():
        if key not in known:
            raise ReservoirURLError(
                f"reservoir URL: unknown parameter {key!r} (known: {', '.join(sorted(known))})"
            )
        target = extra if key in _SIM_EXTRA else ring_kw
        target[key] = _convert(key, values[-1], known[key])
    try:
        params = RingParams.preset(extra.get("preset", "default"), **ring_kw)
    except ValueError as exc:
        raise ReservoirURLError(f"reservoir URL: {exc}") from None
    for key in ("inputs", "max_batch"):
        if key in extra and extra[key] < 1:
            raise ReservoirURLError(f"reservoir URL: {key}={extra[key]} must be at least 1")
    ring_device = extra.get("device", device)  # a device in the URL overrides --device
    if ring_device not in ("cpu", "gpu"):
        raise ReservoirURLError(f"reservoir URL: device={ring_device!r} (expected cpu or gpu)")
    return SimRing(
        params, n_inputs=extra.get("inputs", 16), max_batch=extra.get("max_batch", 65536),
        seed=seed, device=ring_device, fused=bool(extra.get("fused", 1)),
    )


@contextlib.asynccontextmanager
async def open_reservoir(url: str, *, seed: int = 0, device: str = "cpu") -> AsyncIterator[Reservoir]:
    """Open the reservoir named by ``url`` for the duration of the ``async with``.

    ``sim://ring?nodes=24&gain=0.85&noise=0.01``: the simulated ring (parameters:
    kernels.RingParams, plus ``inputs``, ``max_batch``, ``device=cpu|gpu`` and
    ``fused=0`` to run the plain CuPy path instead of the fused kernel).
    ``sim://identity``: a memoryless control whose features are its inputs.
    ``serial:///dev/ttyACM0?baud=115200``, ``socket://127.0.0.1:7000``, ``emu://``,
    ``rfc2217://host:3333?baud=115200`` (a serial port served by ser2net or another
    RFC 2217 server): a microcontroller speaking docs/protocol.md (parameters:
    backends/_device_open.py).
    Any other scheme is looked up among the ``pgt.reservoirs`` entry points (found at
    call time; built-ins win): ``opener(url, seed=seed, device=device)`` may return an
    async context manager yielding the Reservoir (entered for the ``async with``), the
    Reservoir itself, or an awaitable of either (backends/_plugins.py).
    Raises ReservoirURLError (one line, naming the problem) for an unknown scheme
    (listing the known ones, plugins included), a bad parameter or a plugin that fails
    to load; ReservoirError naming the plugin and its distribution when its opener
    fails or returns no reservoir; DeviceUnavailable when a device cannot be reached.
    """
    try:
        parsed = urllib.parse.urlparse(url)
        parsed.port   # noqa: B018 — a port that is not a number raises here, not later
    except ValueError as exc:
        raise ReservoirURLError(f"reservoir URL {url!r}: {exc}") from None
    if parsed.scheme == "sim":
        yield _open_sim(parsed, seed, device)
        return
    if parsed.scheme in ("serial", "socket", "emu", "rfc2217"):
        from pgt.backends._device_open import open_device_url
        async with open_device_url(url, seed=seed) as reservoir:
            yield reservoir
        return
    from pgt.backends._plugins import open_plugin
    async with open_plugin(url, parsed.scheme, seed=seed, device=device,
                           builtins=BUILTIN_SCHEMES) as reservoir:
        yield reservoir
