"""What every reservoir backend is: the protocol the agent programs against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


class ReservoirError(Exception):
    """A reservoir backend failed or answered with something unusable."""


class ReservoirURLError(ReservoirError, ValueError):
    """A reservoir URL names an unknown scheme or a bad parameter."""


@dataclass(frozen=True)
class ReservoirInfo:
    """What the host needs to know about a device.

    ``n_inputs``: length of one input vector (input steps driven into the ring);
    ``n_features``: length of one feature vector read back; ``max_batch``: the
    most input vectors one ``forward`` call may carry.
    """

    name: str
    n_inputs: int
    n_features: int
    max_batch: int


@runtime_checkable
class Reservoir(Protocol):
    """A black-box reservoir: drive it with inputs, read its features.

    ``forward`` takes u of shape (B, n_inputs) with values in [-1, 1] and
    1 <= B <= max_batch, and returns features of shape (B, n_features). It raises
    ReservoirError on a device failure and ValueError on input of the wrong shape
    or range. Backends may also offer ``state_dict()`` / ``load_state_dict()``
    (device state that a resume must restore, such as a simulator's clock) and,
    for a differentiable simulation only, ``vjp(u, grad_features)``.
    """

    info: ReservoirInfo

    async def forward(self, u: Any) -> Any: ...


def check_inputs(info: ReservoirInfo, u) -> None:
    """Raise ValueError naming the problem if ``u`` is not a valid forward batch."""
    if u.ndim != 2 or u.shape[1] != info.n_inputs:
        raise ValueError(
            f"{info.name}: inputs must have shape (B, {info.n_inputs}), got {tuple(u.shape)}"
        )
    if not 1 <= u.shape[0] <= info.max_batch:
        raise ValueError(f"{info.name}: batch of {u.shape[0]} outside 1..{info.max_batch}")
    if float(abs(u).max()) > 1.0:
        raise ValueError(f"{info.name}: inputs must lie in [-1, 1]")
