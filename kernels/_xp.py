"""Choosing the array library: NumPy by default, CuPy when the GPU is asked for.

CuPy is imported lazily, so a CPU-only machine never touches it.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np


class DeviceError(RuntimeError):
    """The requested compute device cannot be used on this machine."""


def get_xp(device: str = "cpu") -> ModuleType:
    """Return the array module for ``device`` ("cpu" -> NumPy, "gpu" -> CuPy).

    Raises DeviceError with a one-line reason when the GPU is asked for but CuPy
    is not installed or sees no CUDA device.
    """
    if device == "cpu":
        return np
    if device != "gpu":
        raise DeviceError(f"unknown device {device!r} (expected 'cpu' or 'gpu')")
    try:
        import cupy
    except ImportError:
        raise DeviceError(
            "device 'gpu' needs CuPy, which is not installed (pip install 'pgt[gpu]')"
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing or broken
        raise DeviceError(f"device 'gpu': CuPy finds no usable CUDA device ({exc})") from None
    if count < 1:
        raise DeviceError("device 'gpu': CuPy finds no CUDA device")
    return cupy


def array_module(a) -> ModuleType:
    """The array module that owns ``a`` (NumPy unless CuPy is loaded and owns it)."""
    module = type(a).__module__
    if module.startswith("cupy"):
        import cupy

        return cupy
    return np


def to_numpy(a) -> np.ndarray:
    """Copy ``a`` to host memory as a NumPy array (no-op for NumPy input)."""
    if isinstance(a, np.ndarray):
        return a
    return a.get()
