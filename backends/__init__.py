"""Reservoir devices behind one protocol.

The agent reaches every ring, simulated or real, through ``open_reservoir(url)``
and the ``Reservoir`` protocol; it never imports a concrete backend. A device on
a serial port or a socket (``serial://``, ``socket://``) and the emulated
microcontroller (``emu://``, ``emulate``) speak docs/protocol.md; their faults are
ReservoirErrors with names.
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
           "open_reservoir", "reservoir_problem", "serve_pty", "serve_tcp"]
