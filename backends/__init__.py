"""Reservoir devices behind one protocol.

The agent reaches every ring, simulated or real, through ``open_reservoir(url)``
and the ``Reservoir`` protocol; it never imports a concrete backend.
"""

from backends._open import open_reservoir
from backends._protocol import Reservoir, ReservoirError, ReservoirInfo, ReservoirURLError

__all__ = ["Reservoir", "ReservoirError", "ReservoirInfo", "ReservoirURLError", "open_reservoir"]
