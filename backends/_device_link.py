"""What the host asks of a device link: its options, and the HELLO + CONFIGURE handshake.

``handshake`` runs on every (re)connection: HELLO, then CONFIGURE with what the
options sample (input steps, virtual nodes, resolution), and checks that the device
can serve it. ``Handshake.check_same_device`` compares a reconnection's HELLO with
the first one: another firmware or other sizes is another device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pgt.backends._faults import link_seconds
from pgt.backends._messages import (ERROR_TEXT_MAX, Configure, ConfigureAck, HelloReply, HelloRequest,
                                Message, ResetCause)
from pgt.backends._protocol import ReservoirInfo
from pgt.backends._session import DeviceDataError, DeviceMismatch, DeviceRefused, Session
from pgt.backends._wire import batch_limit, encoded_size, forward_batch_limit

__all__ = ["DeviceDataError", "Handshake", "Options", "control_timeout", "handshake"]

# The longest reply a control request can get that is longer than the request: an
# ERROR with 128 bytes of text (a HELLO_REPLY is at most 88 bytes on the wire).
_LONGEST_ERROR = encoded_size(1 + ERROR_TEXT_MAX)


def control_timeout(message: Message, baud: float) -> float:
    """Deadline of one attempt of HELLO, CONFIGURE, PING or SAFE (protocol §4):
    max(50 ms, 3 L(q + max(q, 143))) + 100 ms for a request of q bytes on the wire."""
    request = encoded_size(len(message.to_payload()))
    return max(0.05, 3 * link_seconds(request + max(request, _LONGEST_ERROR), baud)) + 0.1


@dataclass(frozen=True)
class Options:
    """How the host drives a device (URL parameters of serial://, socket://, rfc2217://, emu://)."""

    bits: int = 16                       # feature resolution: 8, 12 or 16
    settle: int = 0                      # zero-drive round trips before each sample
    steps: tuple[int, ...] | None = None  # sampled input steps; None: all
    nodes: tuple[int, ...] | None = None  # sampled virtual nodes; None: all
    batch: int = 0                       # most samples per FORWARD; 0: the device's max
    baud: float = 0.0                    # link rate, for timeouts and link time; 0: unknown
    timeout_s: float = 0.0               # FORWARD deadline per attempt; 0: adaptive
    retries: int = 3                     # resends after a timeout (protocol §4)
    open_timeout_s: float = 10.0         # give up opening after this long
    quarantine_after: int = 5            # faults in a row that quarantine the device
    quarantine_s: float = 30.0           # probe interval while quarantined
    backoff_max_s: float = 5.0           # reconnect backoff: 0.1 s doubling up to this
    log_trials: bool = False             # log trial_accepted for every trial


@dataclass(frozen=True)
class Handshake:
    """A verified device: its HELLO reply and the configuration it acknowledged."""

    hello: HelloReply
    config: ConfigureAck

    @property
    def reset_cause(self) -> ResetCause:
        return self.hello.reset_cause

    def info(self, options: Options) -> ReservoirInfo:
        h, c = self.hello, self.config
        limit = min(h.max_batch, batch_limit(h.n_inputs, c.n_features, c.bits))
        if options.batch:
            limit = min(limit, options.batch)
        return ReservoirInfo(name=h.firmware_id or "device", n_inputs=h.n_inputs,
                             n_features=c.n_features, max_batch=limit)

    def check_same_device(self, other: Handshake) -> None:
        """Raise DeviceMismatch unless ``other`` is the device we first verified."""
        for name in ("firmware_id", "n_inputs", "n_nodes", "max_batch"):
            was, now = getattr(self.hello, name), getattr(other.hello, name)
            if was != now:
                raise DeviceMismatch(f"another device answered: {name} was {was!r}, now {now!r}")


def _sampling(hello: HelloReply, options: Options) -> Configure:
    steps = options.steps if options.steps is not None else range(hello.n_inputs)
    nodes = options.nodes if options.nodes is not None else range(hello.n_nodes)
    for name, chosen, size in (("steps", steps, hello.n_inputs), ("nodes", nodes, hello.n_nodes)):
        if max(chosen) >= size:
            raise DeviceMismatch(f"sampling {name} up to {max(chosen)}, but the device has "
                                 f"{size} {'input steps' if name == 'steps' else 'virtual nodes'}")
    return Configure(tuple(steps), tuple(nodes), options.bits, options.settle)


async def handshake(session: Session, options: Options,
                    timeout: Callable[[Message], float] | None = None) -> Handshake:
    """HELLO then CONFIGURE; raises DeviceMismatch when the device cannot serve us.

    ``timeout(request)`` is the deadline of each attempt (default: control_timeout).
    """
    timeout = timeout or (lambda message: control_timeout(message, options.baud))
    try:
        hello = await session.request(HelloRequest(), timeout=timeout(HelloRequest()))
        if forward_batch_limit(hello.n_inputs) < 1:
            raise DeviceMismatch(f"a FORWARD cannot carry one sample of {hello.n_inputs} inputs")
        request = _sampling(hello, options)
        ack = await session.request(request, timeout=timeout(request))
    except DeviceRefused as exc:   # the device cannot serve this host or configuration
        raise DeviceMismatch(str(exc)) from None
    if ack != request.ack():
        raise DeviceMismatch(f"device acknowledged another configuration than the one sent: {ack}")
    return Handshake(hello, ack)
