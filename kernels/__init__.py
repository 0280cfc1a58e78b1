"""Array math on NumPy or CuPy: the simulated ring, the digital layers and the
counter-based perturbations. Every function is xp-generic; the ``fused_*`` ones are
single CuPy kernels (CuPy is imported only when one is called)."""

from pgt.kernels._fused import fused_accumulate, fused_ring_forward, fused_ring_supported
from pgt.kernels._layers import (
    batched_dense_forward,
    dense_backward,
    dense_forward,
    mean_squared_error,
    mean_squared_error_backward,
    softmax_cross_entropy,
    softmax_cross_entropy_backward,
    tanh_backward,
    tanh_forward,
)
from pgt.kernels._philox import DISTRIBUTIONS, accumulate, directions, philox4x32
from pgt.kernels._ring import (NOISE_STREAM, PRESETS, RingParams, detector_noise, gain_path,
                               needs_gain_path, ring_backward, ring_forward)
from pgt.kernels._xp import DeviceError, array_module, get_xp, to_numpy

__all__ = [
    "DISTRIBUTIONS", "NOISE_STREAM", "PRESETS", "DeviceError", "RingParams", "accumulate",
    "array_module", "batched_dense_forward", "dense_backward", "dense_forward",
    "detector_noise", "directions", "fused_accumulate", "fused_ring_forward",
    "fused_ring_supported", "gain_path", "get_xp", "mean_squared_error",
    "mean_squared_error_backward", "needs_gain_path", "philox4x32", "ring_backward",
    "ring_forward", "softmax_cross_entropy", "softmax_cross_entropy_backward", "tanh_backward",
    "tanh_forward", "to_numpy",
]
