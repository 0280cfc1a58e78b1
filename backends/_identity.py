"""``sim://identity``: a reservoir that returns its inputs as its features.

The control of the memory experiments: the same protocol and the same model as
the ring, but no memory, no nonlinearity and no expansion (n_features ==
n_inputs). Differentiable (``vjp`` is the identity), so every estimator runs on it.

    sim://identity?inputs=16&max_batch=65536
"""

from __future__ import annotations

import urllib.parse

import numpy as np

from pgt.backends._protocol import ReservoirInfo, ReservoirURLError, check_inputs

_PARAMS = ("inputs", "max_batch")


class IdentityReservoir:
    """Features = inputs, checked like any device's."""

    def __init__(self, *, n_inputs: int = 16, max_batch: int = 65536) -> None:
        if n_inputs < 1 or max_batch < 1:
            raise ReservoirURLError("reservoir URL: inputs and max_batch must be >= 1")
        self.info = ReservoirInfo(name="sim-identity", n_inputs=n_inputs,
                                  n_features=n_inputs, max_batch=max_batch)

    async def forward(self, u):
        u = np.asarray(u, dtype=np.float64)
        check_inputs(self.info, u)
        return u.copy()

    def vjp(self, u, grad_features):
        return np.asarray(grad_features).reshape(np.shape(u))


def open_identity(parsed: urllib.parse.ParseResult) -> IdentityReservoir:
    """The identity reservoir of a parsed ``sim://identity?...`` URL."""
    kw = {}
    for key, values in urllib.parse.parse_qs(parsed.query, keep_blank_values=True).items():
        if key not in _PARAMS:
            raise ReservoirURLError(f"reservoir URL: unknown parameter {key!r} "
                                    f"(known: {', '.join(_PARAMS)})")
        try:
            kw[key] = int(values[-1])
        except ValueError:
            raise ReservoirURLError(f"reservoir URL: {key}={values[-1]!r} is not a valid int") from None
    return IdentityReservoir(n_inputs=kw.get("inputs", 16), max_batch=kw.get("max_batch", 65536))
