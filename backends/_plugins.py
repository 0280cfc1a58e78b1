"""Reservoir URL schemes from other packages: entry points of the group ``pgt.reservoirs``.

A distribution adds a scheme with an entry point whose name is the scheme and whose
value is an opener::

    [project.entry-points."pgt.reservoirs"]
    myring = "myring_plugin:open_myring"

The contract: ``opener(url: str, *, seed: int, device: str)`` gets the whole URL (its
query is the plugin's to parse), the run's seed and its array device (``"cpu"`` or
``"gpu"``), and returns, or (``async def``) returns an awaitable of, either

- an async context manager (a function decorated with contextlib.asynccontextmanager,
  or a reservoir class with ``__aenter__``/``__aexit__``): it is entered for as long as
  the run holds the reservoir and exited when it lets go, and the reservoir is what
  ``__aenter__`` returns (the object itself when that is None); or
- the reservoir itself, which is then never closed.

The reservoir needs ``info`` with ``name`` (str), ``n_inputs``, ``n_features`` and
``max_batch`` (positive ints) — a ReservoirInfo — and ``async forward(u)``, as in
backends/_protocol.py; ``vjp``, ``state_dict`` and ``load_state_dict`` are optional.

Entry points are looked up when a URL is opened, so a package installed after ``pgt``
was imported is found. The name must be a URL scheme (a letter, then letters, digits,
``+``, ``-`` or ``.``; matched without regard to case). A plugin cannot replace a
built-in scheme: an entry point named sim, serial, socket or emu is ignored.

Problems are one-line errors naming the scheme and its distribution: ReservoirURLError
for an unknown or doubly registered scheme and for an entry point that fails to load;
ReservoirError for an opener that fails (a ReservoirError of its own passes through
unchanged; any other exception is wrapped and kept as ``__cause__``) or returns
something that is not a reservoir. Errors raised while the reservoir is in use are
the plugin's own, never wrapped.
"""

from __future__ import annotations

import contextlib
import inspect
import numbers
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

from pgt.backends._protocol import Reservoir, ReservoirError, ReservoirURLError

GROUP = "pgt.reservoirs"
_INFO_INTS = ("n_inputs", "n_features", "max_batch")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")   # what urllib.parse reads as a URL scheme


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _origin(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None or not dist.name:
        return "unknown distribution"
    return f"{dist.name} {dist.version}"


def registered(builtins: Sequence[str]) -> dict[str, list[Any]]:
    """The group's entry points by scheme (lower case), less those naming a built-in
    or something no URL can start with (``my_ring``: no underscores in a scheme)."""
    import importlib.metadata  # only when a URL names no built-in scheme

    found: dict[str, list[Any]] = {}
    for ep in importlib.metadata.entry_points(group=GROUP):
        scheme = ep.name.strip().lower()
        if scheme not in builtins and _SCHEME.fullmatch(scheme):
            found.setdefault(scheme, []).append(ep)
    return found


def _entry_point(url: str, scheme: str, builtins: Sequence[str]) -> Any:
    plugins = registered(builtins)
    eps = plugins.get(scheme.lower(), [])
    if not eps:
        known = [*builtins, *(f"{s} ({', '.join(_origin(ep) for ep in plugins[s])})"
                              for s in sorted(plugins))]
        raise ReservoirURLError(f"reservoir URL {url!r}: unknown scheme {scheme!r} "
                                f"(known: {', '.join(known)})")
    if len(eps) > 1:
        raise ReservoirURLError(f"reservoir URL {url!r}: scheme {scheme!r} is registered by "
                                f"several distributions ({', '.join(map(_origin, eps))}); "
                                f"uninstall all but one")
    return eps[0]


def _load(ep: Any, url: str, who: str) -> Any:
    try:
        opener = ep.load()
    except Exception as exc:
        raise ReservoirURLError(f"reservoir URL {url!r}: {who}: entry point {ep.value!r} "
                                f"failed to load: {_line(exc)}") from exc
    if not callable(opener):
        raise ReservoirURLError(f"reservoir URL {url!r}: {who}: entry point {ep.value!r} "
                                f"is a {type(opener).__name__!r}, not a callable opener")
    return opener


async def _enter(result: Any, stack: contextlib.AsyncExitStack) -> Any:
    """What an opener returned, awaited and entered as the contract says."""
    if inspect.isawaitable(result):
        result = await result
    if hasattr(type(result), "__aenter__") and hasattr(type(result), "__aexit__"):
        entered = await stack.enter_async_context(result)
        return result if entered is None else entered
    return result


def reservoir_problem(reservoir: Any) -> str | None:
    """Why ``reservoir`` is not a Reservoir, or None."""
    if inspect.isasyncgen(reservoir):
        return "an async generator (is @contextlib.asynccontextmanager missing?)"
    info = getattr(reservoir, "info", None)
    if info is None:
        return "no info"
    if not isinstance(getattr(info, "name", None), str):
        return "info has no name"
    for field in _INFO_INTS:
        value = getattr(info, field, None)
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            return f"info.{field} is {value!r}, not an int >= 1"
    if not callable(getattr(reservoir, "forward", None)):
        return "no forward"
    return None


@contextlib.asynccontextmanager
async def open_plugin(url: str, scheme: str, *, seed: int, device: str,
                      builtins: Sequence[str]) -> AsyncIterator[Reservoir]:
    """Open ``url`` with the opener registered for ``scheme`` (see the module docstring)."""
    ep = _entry_point(url, scheme, builtins)
    who = f"plugin {ep.name!r} ({_origin(ep)})"
    opener = _load(ep, url, who)
    async with contextlib.AsyncExitStack() as stack:
        try:
            reservoir = await _enter(opener(url, seed=seed, device=device), stack)
        except ReservoirError:
            raise
        except Exception as exc:
            raise ReservoirError(f"reservoir URL {url!r}: {who} failed to open: "
                                 f"{_line(exc)}") from exc
        if (problem := reservoir_problem(reservoir)) is not None:
            raise ReservoirError(f"reservoir URL {url!r}: {who} returned a "
                                 f"{type(reservoir).__name__!r}, not a reservoir: {problem}")
        yield reservoir
