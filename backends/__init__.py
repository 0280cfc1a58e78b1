"""Reservoir devices behind one protocol.

The agent reaches every ring, simulated or real, through ``open_reservoir(url)``
and the ``Reservoir`` protocol; it never imports a concrete backend. A device on
a serial port or a socket (``serial://``, ``socket://``), a serial port served by
ser2net or another RFC 2217 server (``rfc2217://``, ``serve_rfc2217``) and the
emulated microcontroller (``emu://``, ``emulate``) speak docs/protocol.md; their
faults are ReservoirErrors with names.
"""

from pgt.backends._device import DeviceUnavailable
from pgt.backends._device_link import DeviceDataError
from pgt.backends._emulate import emulate, serve_pty, serve_tcp
from pgt.backends._emulator import EmulatedDevice, EmulatorConfig
from pgt.backends._faults import FaultSpec
from pgt.backends._health import DeviceHealth
from pgt.backends._open import open_reservoir
from pgt.backends._plugins import reservoir_problem
from pgt.backends._protocol import Reservoir, ReservoirError, ReservoirInfo, ReservoirURLError
from pgt.backends._session import DeviceMismatch, DeviceRefused, LinkLost

__all__ = ["DeviceDataError", "DeviceHealth", "DeviceMismatch", "DeviceRefused",
           "DeviceUnavailable", "EmulatedDevice", "EmulatorConfig", "FaultSpec", "LinkLost",
           "Reservoir", "ReservoirError", "ReservoirInfo", "ReservoirURLError", "emulate",
           "open_reservoir", "reservoir_problem", "serve_pty", "serve_rfc2217", "serve_tcp"]


def __getattr__(name: str):
    # serve_rfc2217 loads when first used, so that ``python -m pgt.backends._rfc2217_server``
    # runs that module once, as __main__ only
    if name == "serve_rfc2217":
        from pgt.backends._rfc2217_server import serve_rfc2217
        return serve_rfc2217
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
