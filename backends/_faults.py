"""Fault injection and the link's byte-rate model for the emulated microcontroller.

``FaultSpec.parse("corrupt=0.01,reset_every=500,unplug_at=2000")`` names the faults;
``FaultyLink`` wraps the emulator's end of a stream and applies them: bytes dropped
or corrupted (each byte independently, in both directions), reply frames truncated
or sent twice, and the time the bytes take on a link of ``baud`` (10 bits per byte,
8N1), slept with ``trio.sleep`` so link time shows in measurements. Stalls, resets
and unplugs are decided here and acted on by the device (``_emulator``).

Every fault injected is reported as an ``InjectedFault`` naming the exchange it hit
(the request's seq and trial id: a reply carries its request's), so a soak can
check with ``unseen_faults`` that the host logged each one.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import trio

from pgt.backends._wire import MAX_ENCODED_FRAME, ProtocolError, decode_frame

__all__ = ["FAULT_KINDS", "FaultSpec", "FaultyLink", "InjectedFault", "link_seconds",
           "unseen_faults"]

# What an InjectedFault can be: bytes of one request or one reply frame corrupted or
# dropped, a reply cut short or sent twice, a FORWARD stalled, a watchdog reset, an unplug.
FAULT_KINDS = ("request_damaged", "reply_damaged", "truncated", "duplicated", "stalled", "reset",
               "unplugged")


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

    @property
    def active(self) -> bool:
        """Whether any fault is switched on."""
        return any((self.drop, self.corrupt, self.truncate, self.duplicate, self.stall,
                    self.reset_every, self.unplug_at))

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


@dataclass(frozen=True)
class InjectedFault:
    """One fault the emulator injected, and the exchange it hit.

    ``frame`` is the message type of the frame it hit ("" if that frame was not
    valid to begin with); ``seq`` and ``trial_id`` are its header's (a reply's are its
    request's), None where unknown. A reply that lost its final 0x00 reaches the host
    only joined to the next frame the device sends: ``seen_with`` is that frame's
    (seq, trial_id); ``incomplete`` says the link closed first, so the host never had
    it whole.
    """

    kind: str               # one of FAULT_KINDS
    frame: str
    seq: int | None
    trial_id: int | None
    detail: str = ""        # e.g. "2 bytes corrupted, 1 byte dropped"
    seen_with: tuple[int | None, int | None] | None = None
    incomplete: bool = False

    def __str__(self) -> str:
        where = f"{self.frame or 'frame'} seq {self.seq} trial {self.trial_id}"
        tail = (" (the link closed before its end)" if self.incomplete else
                f" (joined to seq {self.seen_with[0]})" if self.seen_with else "")
        return f"injected {self.kind} on {where}" + (f": {self.detail}" if self.detail else "") + tail


def _header(frame: bytes) -> tuple[str, int | None, int | None]:
    """The message type name, seq and trial_id of an encoded frame ("" if it is not valid)."""
    try:
        decoded = decode_frame(frame)
    except ProtocolError as exc:
        return "", exc.seq, exc.trial_id
    return decoded.message.TYPE.name, decoded.seq, decoded.trial_id


def fault_on(kind: str, frame: bytes, detail: str = "") -> InjectedFault:
    """An InjectedFault of ``kind`` on the encoded ``frame``, named by its header."""
    return InjectedFault(kind, *_header(frame), detail)


_EVIDENCE = ("device_retry", "device_stale_reply", "device_garbled_frame", "device_fault")
_RECONNECT_CAUSE = {"reset": "watchdog", "unplugged": "power_on"}


def unseen_faults(injected: Iterable[InjectedFault], events: Iterable[dict]) -> list[InjectedFault]:
    """The injected faults the host's log does not account for; [] when it saw them all.

    A fault is seen when a ``device_retry``, ``device_stale_reply``,
    ``device_garbled_frame`` or ``device_fault`` event names its (seq, trial_id), or
    its ``seen_with``; a reset or an unplug also needs a ``device_reconnect`` with
    reset cause ``watchdog`` or ``power_on`` of its own. An ``incomplete`` fault never
    reached the host and is not asked for. A stall shorter than the host's deadline is
    not a fault the host can see: inject stalls with ``stall_s`` above it.
    """
    events = list(events)
    named = {(e.get("seq"), e.get("trial_id")) for e in events if e["event"] in _EVIDENCE}
    causes = Counter(e.get("reset_cause") for e in events if e["event"] == "device_reconnect")
    unseen = []
    for fault in injected:
        cause = _RECONNECT_CAUSE.get(fault.kind)
        reconnected = cause is None or causes[cause] > 0
        if cause is not None and reconnected:
            causes[cause] -= 1
        logged = (fault.seq, fault.trial_id) in named or fault.seen_with in named
        if not fault.incomplete and not (reconnected and logged):
            unseen.append(fault)
    return unseen


def _damage_text(corrupted: int, dropped: int) -> str:
    """E.g. "2 bytes corrupted, 1 byte dropped"."""
    parts = [f"{n} byte{'s' * (n != 1)} {what}" for n, what in ((corrupted, "corrupted"),
                                                                (dropped, "dropped")) if n]
    return ", ".join(parts)


class FaultyLink:
    """The emulator's end of a link: paces bytes at ``baud`` and injects byte faults.

    ``stats`` counts what was injected (by kind); ``report`` gets one InjectedFault
    per damaged frame, truncation and duplicate, so a soak can compare them with the
    host's log. Bytes from the host are damaged as they arrive, in any split; the
    fault is named after the frame the damaged bytes belonged to (a damaged 0x00,
    the frame it ends), and reported when they make the device lose that frame: a
    corrupted 0x00 of an empty frame joins the next frame, a dropped one loses nothing.
    Call ``close`` when the link ends.
    """

    def __init__(self, stream: trio.abc.Stream, spec: FaultSpec, rng: np.random.Generator,
                 baud: float, stats: Counter,
                 report: Callable[[InjectedFault], None] = lambda fault: None) -> None:
        self.stream, self.spec, self.rng, self.baud, self.stats = stream, spec, rng, baud, stats
        self.report = report
        self._request = bytearray()   # the host's bytes of the frame arriving, undamaged
        self._hits = [0, 0]           # its bytes corrupted and dropped so far
        self._unfinished: list[InjectedFault] = []   # replies sent without a final 0x00

    async def receive_some(self) -> bytes:
        """Bytes that survived the link; b"" only when the stream ended."""
        while True:
            data = await self.stream.receive_some()
            if not data:
                return data
            await trio.sleep(link_seconds(len(data), self.baud))
            damaged, corrupted, kept = self._garble(data)
            if corrupted is not None:
                self._name_requests(data, corrupted, ~kept)
            if damaged:
                return damaged

    async def send_frame(self, frame: bytes) -> None:
        """Send one reply frame, truncated, duplicated (back to back) or damaged as dice say."""
        reply, faults = frame, []
        if self.spec.truncate and self.rng.random() < self.spec.truncate:
            frame = frame[: int(self.rng.integers(1, len(frame)))]
            self.stats["truncated"] += 1
            faults.append(fault_on("truncated", reply, f"{len(frame)} of {len(reply)} bytes sent"))
        copies = 1
        if self.spec.duplicate and self.rng.random() < self.spec.duplicate:
            copies = 2
            self.stats["duplicated"] += 1
            faults.append(fault_on("duplicated", reply))
        data = b""
        for _ in range(copies):
            damaged, corrupted, kept = self._garble(frame)
            if corrupted is not None and (corrupted.any() or not kept.all()):
                faults.append(fault_on("reply_damaged", reply,
                                       _damage_text(int(corrupted.sum()), int((~kept).sum()))))
            data += damaged
        self._settle_faults(reply, faults, complete=data.endswith(b"\x00"))
        await trio.sleep(link_seconds(len(data), self.baud))
        await self.stream.send_all(data)

    def _settle_faults(self, reply: bytes, faults: list[InjectedFault], complete: bool) -> None:
        """Report the faults of ``reply``; earlier unfinished ones reach the host with it."""
        if self._unfinished:
            joined = _header(reply)[1:]
            for fault in self._unfinished:
                self.report(dataclasses.replace(fault, seen_with=joined))
            self._unfinished = []
        if complete:
            for fault in faults:
                self.report(fault)
        else:   # no 0x00 at its end: the host sees it only with the next frame
            self._unfinished = faults

    def close(self) -> None:
        """The link ended: a reply still unfinished never reached the host whole."""
        for fault in self._unfinished:
            self.report(dataclasses.replace(fault, incomplete=True))
        self._unfinished = []

    def _garble(self, data: bytes) -> tuple[bytes, np.ndarray | None, np.ndarray | None]:
        """``data`` after the link's byte faults, with masks of the bytes corrupted and
        kept (None when the link damages no bytes)."""
        if not (data and (self.spec.drop or self.spec.corrupt)):
            return data, None, None
        raw = np.frombuffer(data, np.uint8).copy()
        corrupt = self.rng.random(raw.size) < self.spec.corrupt
        raw[corrupt] ^= self.rng.integers(1, 256, int(corrupt.sum()), dtype=np.uint8)
        keep = self.rng.random(raw.size) >= self.spec.drop
        self.stats["bytes_corrupted"] += int(corrupt.sum())
        self.stats["bytes_dropped"] += int((~keep).sum())
        return raw[keep].tobytes(), corrupt, keep

    def _name_requests(self, data: bytes, corrupted: np.ndarray, dropped: np.ndarray) -> None:
        """Report each frame of the host's (undamaged) ``data`` the damage makes the device lose."""
        start = 0
        while True:
            end = data.find(b"\x00", start)
            stop = len(data) if end < 0 else end
            self._request += data[start:stop]
            self._hits[0] += int(corrupted[start:stop].sum())
            self._hits[1] += int(dropped[start:stop].sum())
            if end < 0:
                if len(self._request) > MAX_ENCODED_FRAME:   # not the host's: forget it
                    self._request.clear()
                return
            self._frame_end(bool(corrupted[end]), bool(dropped[end]))
            start = end + 1

    def _frame_end(self, corrupted: bool, dropped: bool) -> None:
        """The host's frame in ``_request`` ended with a 0x00 ``corrupted`` or ``dropped``."""
        hits = [self._hits[0] + corrupted, self._hits[1] + dropped]
        if self._request:
            if any(hits):
                self.report(fault_on("request_damaged", bytes(self._request), _damage_text(*hits)))
            self._hits = [0, 0]
        elif corrupted:       # an empty frame's 0x00 became a byte that joins the next frame
            self._hits = hits
        elif not dropped:     # an intact 0x00: earlier junk was a frame of its own
            self._hits = [0, 0]
        self._request.clear()
