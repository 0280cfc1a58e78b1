"""Fault injection and the link's byte-rate model for the emulated microcontroller.

``FaultSpec.parse("corrupt=0.01,reset_every=500,unplug_at=2000")`` names the faults;
``FaultyLink`` wraps the emulator's end of a stream and applies them: bytes dropped
or corrupted (each byte independently, in both directions), reply frames truncated
or sent twice, and the time the bytes take on a link of ``baud`` (10 bits per byte,
8N1), slept with ``trio.sleep`` so link time shows in measurements. Stalls, resets
and unplugs are decided here and acted on by the device (``_emulator``).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

import numpy as np
import trio

__all__ = ["FaultSpec", "FaultyLink", "link_seconds"]


def link_seconds(n_bytes: int, baud: float) -> float:
    """Time ``n_bytes`` take on a UART at ``baud`` (8N1: 10 bits a byte); 0 if unlimited."""
    return 10.0 * n_bytes / baud if baud else 0.0


@dataclass(frozen=True)
class FaultSpec:
    """Which faults to inject, and how often. All zero: a perfect device."""

    drop: float = 0.0          # probability that a byte on the link is lost
    corrupt: float = 0.0       # probability that a byte on the link is changed
    truncate: float = 0.0      # probability that a reply frame is cut short
    duplicate: float = 0.0     # probability that a reply frame is sent twice
    stall: float = 0.0         # probability that a FORWARD hangs for stall_s first
    stall_s: float = 2.0       # how long a stall lasts
    reset_every: int = 0       # the device resets (watchdog) at every Nth FORWARD
    unplug_at: int = 0         # the link is unplugged at this FORWARD (once)
    unplug_s: float = 1.0      # how long it stays unplugged
    seed: int = 0              # seeds the fault dice

    def __post_init__(self) -> None:
        for name in ("drop", "corrupt", "truncate", "duplicate", "stall"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"faults: {name} must be a probability in [0, 1]")
        if min(self.stall_s, self.unplug_s, self.reset_every, self.unplug_at) < 0:
            raise ValueError("faults: counts and durations must be >= 0")

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        """``key=value,...`` (e.g. ``corrupt=0.01,reset_every=500``); '' or 'none': no faults.

        Raises ValueError naming an unknown key or a bad value.
        """
        if text.strip() in ("", "none"):
            return cls()
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        values: dict[str, float | int] = {}
        for item in text.split(","):
            key, _, raw = item.partition("=")
            key = key.strip()
            if key not in types:
                raise ValueError(f"faults: unknown fault {key!r} (known: {', '.join(types)})")
            kind = int if types[key] in ("int", int) else float
            try:
                values[key] = kind(raw)
            except ValueError:
                raise ValueError(f"faults: {key}={raw!r} is not a valid {kind.__name__}") from None
        return cls(**values)


class FaultyLink:
    """The emulator's end of a link: paces bytes at ``baud`` and injects byte faults.

    ``stats`` counts what was injected (by kind) so a soak can compare it with the
    host's log.
    """

    def __init__(self, stream: trio.abc.Stream, spec: FaultSpec, rng: np.random.Generator,
                 baud: float, stats: Counter) -> None:
        self.stream, self.spec, self.rng, self.baud, self.stats = stream, spec, rng, baud, stats

    async def receive_some(self) -> bytes:
        """Bytes that survived the link; b"" only when the stream ended."""
        while True:
            data = await self.stream.receive_some()
            if not data:
                return data
            await trio.sleep(link_seconds(len(data), self.baud))
            if data := self._garble(data):
                return data

    async def send_frame(self, frame: bytes) -> None:
        if self.spec.truncate and self.rng.random() < self.spec.truncate:
            frame = frame[: int(self.rng.integers(1, len(frame)))]
            self.stats["truncated"] += 1
        copies = 1
        if self.spec.duplicate and self.rng.random() < self.spec.duplicate:
            copies = 2
            self.stats["duplicated"] += 1
        for _ in range(copies):
            data = self._garble(frame)
            await trio.sleep(link_seconds(len(data), self.baud))
            await self.stream.send_all(data)

    def _garble(self, data: bytes) -> bytes:
        if not (data and (self.spec.drop or self.spec.corrupt)):
            return data
        raw = np.frombuffer(data, np.uint8).copy()
        corrupt = self.rng.random(raw.size) < self.spec.corrupt
        raw[corrupt] ^= self.rng.integers(1, 256, int(corrupt.sum()), dtype=np.uint8)
        keep = self.rng.random(raw.size) >= self.spec.drop
        self.stats["bytes_corrupted"] += int(corrupt.sum())
        self.stats["bytes_dropped"] += int((~keep).sum())
        return raw[keep].tobytes()
