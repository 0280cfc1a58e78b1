"""From a device URL to an opened DeviceReservoir: serial://, socket://, rfc2217:// and emu://.

    serial:///dev/ttyACM0?baud=115200&bits=12&sample_steps=12-15
    socket://127.0.0.1:7000?baud=12000000
    rfc2217://192.168.1.20:3333?baud=115200
    emu://?latency_ms=2&faults=corrupt=0.01;reset_every=500&noise=0.01

Every device URL takes the host options of ``_device_link.Options``: ``bits``,
``settle``, ``sample_steps`` and ``sample_nodes`` (what CONFIGURE asks for, e.g.
``0-3,8``), ``batch``, ``baud``, ``timeout_ms``, ``retries``, ``open_timeout_s``,
``quarantine_after``, ``quarantine_s``, ``backoff_max_s``, ``log_trials``.
``rfc2217://`` is a serial port on another host, served by ser2net or any RFC 2217
server (``_rfc2217_server``); ``baud`` (default 115200) is also the rate the server is
asked to set on that port. ``emu://``
also takes the emulator's: ``latency_ms``, ``round_trip_us``, ``scale``, ``inputs``,
``max_batch``, ``faults`` (``;`` or ``,`` between faults) and the ring's parameters
(kernels.RingParams: ``nodes``, ``gain``, ``noise``, ``drift``, ...).
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import AsyncIterator

import trio

from pgt.backends._device import DeviceReservoir, open_device
from pgt.backends._device_link import Options
from pgt.backends._emulate import MemoryLink
from pgt.backends._emulator import EmulatedDevice, EmulatorConfig
from pgt.backends._faults import FaultSpec
from pgt.backends._protocol import ReservoirURLError
from pgt.backends._session import single_errors
from pgt.backends._transport import rfc2217_connector, serial_connector, tcp_connector
from pgt.kernels import RingParams

__all__ = ["open_device_url", "parse_indices"]

DEVICE_SCHEMES = ("serial", "socket", "emu", "rfc2217")


def parse_indices(text: str) -> tuple[int, ...]:
    """``"0-3,8"`` -> (0, 1, 2, 3, 8). Raises ValueError."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    if not out:
        raise ValueError("no indices")
    return tuple(out)


def _flag(text: str) -> bool:
    if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
        raise ValueError(text)
    return text.lower() in ("1", "true", "yes")


_HOST = {"bits": ("bits", int), "settle": ("settle", int), "sample_steps": ("steps", parse_indices),
         "sample_nodes": ("nodes", parse_indices), "batch": ("batch", int), "baud": ("baud", float),
         "timeout_ms": ("timeout_s", lambda v: float(v) / 1000), "retries": ("retries", int),
         "open_timeout_s": ("open_timeout_s", float), "quarantine_after": ("quarantine_after", int),
         "quarantine_s": ("quarantine_s", float), "backoff_max_s": ("backoff_max_s", float),
         "log_trials": ("log_trials", _flag)}
_EMU = {"latency_ms": ("latency_s", lambda v: float(v) / 1000),
        "round_trip_us": ("round_trip_s", lambda v: float(v) / 1e6), "scale": ("scale", float),
        "inputs": ("n_inputs", int), "max_batch": ("max_batch", int),
        "faults": ("faults", lambda v: FaultSpec.parse(v.replace(";", ",")))}


def _parse(url: str, scheme: str) -> tuple[dict, dict, dict]:
    """Host options, emulator settings and ring parameters named in the query."""
    ring_types = {**RingParams.field_types(), "preset": str} if scheme == "emu" else {}
    host, emu, ring = {}, {}, {}
    for key, values in urllib.parse.parse_qs(urllib.parse.urlparse(url).query,
                                             keep_blank_values=True).items():
        raw = values[-1].replace(" ", "+")   # a "+" in a query (1e+06) arrives as a space
        if key in _HOST or (scheme == "emu" and key in _EMU):
            (name, convert), target = (_HOST[key], host) if key in _HOST else (_EMU[key], emu)
        elif key in ring_types:
            name, convert, target = key, ring_types[key], ring
        else:
            known = sorted({*_HOST, *(_EMU if scheme == "emu" else ()), *ring_types})
            raise ReservoirURLError(f"reservoir URL: unknown parameter {key!r} (known: {', '.join(known)})")
        try:
            target[name] = convert(raw)
        except ValueError as exc:
            raise ReservoirURLError(f"reservoir URL: {key}={raw!r} is not valid ({exc})") from None
    return host, emu, ring


# The lowest value each numeric setting can take (None: no bound beyond its type).
_AT_LEAST = {"settle": 0, "batch": 0, "baud": 0.0, "retries": 0, "open_timeout_s": 0.0,
             "quarantine_after": 1, "quarantine_s": 0.0, "backoff_max_s": 0.0,
             "latency_s": 0.0, "round_trip_s": 0.0, "n_inputs": 1, "max_batch": 1}
_ABOVE_ZERO = ("timeout_s", "scale")


def _check_ranges(values: dict) -> None:
    """One-line errors for values no device could use (found before opening it)."""
    import math

    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ReservoirURLError(f"reservoir URL: {name} = {value!r} is not a finite number")
        low = _AT_LEAST.get(name)
        if low is not None and value < low:
            raise ReservoirURLError(f"reservoir URL: {name} = {value!r} must be at least {low}")
        if name in _ABOVE_ZERO and not value > 0:
            raise ReservoirURLError(f"reservoir URL: {name} = {value!r} must be above 0")
    for name in ("steps", "nodes"):
        if name in values and (min(values[name]) < 0 or list(values[name]) != sorted(values[name])):
            raise ReservoirURLError(f"reservoir URL: sample_{name} must be ascending "
                                    f"non-negative indices, got {values[name]}")


def _options(host: dict) -> Options:
    if host.get("bits", 16) not in (8, 12, 16):
        raise ReservoirURLError(f"reservoir URL: bits={host['bits']} is not 8, 12 or 16")
    _check_ranges(host)
    return Options(**host)


def _endpoint(parsed: urllib.parse.ParseResult, url: str):
    if parsed.scheme == "serial":
        if not parsed.path:
            raise ReservoirURLError(f"reservoir URL {url!r}: no port path (serial:///dev/ttyACM0)")
        return parsed.path
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host = port = None
    if not host or port is None:
        example = "rfc2217://192.168.1.20:3333" if parsed.scheme == "rfc2217" else "socket://127.0.0.1:7000"
        raise ReservoirURLError(f"reservoir URL {url!r}: needs host:port ({example})")
    return host, port


@contextlib.asynccontextmanager
async def open_device_url(url: str, *, seed: int = 0) -> AsyncIterator[DeviceReservoir]:
    """The device named by a serial://, socket://, rfc2217:// or emu:// URL, opened and verified."""
    parsed = urllib.parse.urlparse(url)
    host, emu, ring = _parse(url, parsed.scheme)
    options = _options(host)
    _check_ranges(emu)
    if parsed.scheme == "emu":
        try:
            preset = ring.pop("preset", "default")
            config = EmulatorConfig(ring=RingParams.preset(preset, **ring),
                                    baud=host.get("baud", 0.0), seed=seed, **emu)
        except (TypeError, ValueError) as exc:
            raise ReservoirURLError(f"reservoir URL: {exc}") from None
        with single_errors():
            async with trio.open_nursery() as nursery:
                link = MemoryLink(EmulatedDevice(config), nursery)
                async with open_device(link.connect, options, url) as device:
                    device.emulator = link.device
                    yield device
                nursery.cancel_scope.cancel()
        return
    where = _endpoint(parsed, url)
    if parsed.scheme == "serial":
        host.setdefault("baud", 115200.0)
        connector = serial_connector(where, int(host["baud"]))
    elif parsed.scheme == "rfc2217":
        baud = host.setdefault("baud", 115200.0)
        if not 1 <= baud < 2**32:
            raise ReservoirURLError(f"reservoir URL {url!r}: baud={baud:g} is not a rate "
                                    "an RFC 2217 server can set")
        connector = rfc2217_connector(*where, int(baud))
    else:
        connector = tcp_connector(*where)
    async with open_device(connector, options, url) as device:
        yield device
