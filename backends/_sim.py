"""The ``sim://`` backend: the simulated ring behind the Reservoir protocol."""

from __future__ import annotations

import numpy as np

from backends._protocol import ReservoirInfo, check_inputs
from kernels import RingParams, get_xp, ring_backward, ring_forward


class SimRing:
    """A simulated ring reached exactly as hardware is: ``await forward(u)``.

    The ring keeps a clock (one tick per forward call) that drives its gain drift
    and seeds its detector noise, so a run is reproducible from (seed, tick) and a
    resume restores the clock through ``state_dict``.
    """

    def __init__(self, params: RingParams, *, n_inputs: int = 16, max_batch: int = 65536,
                 seed: int = 0, device: str = "cpu") -> None:
        self.params = params
        self.xp = get_xp(device)
        self.seed = seed
        self.tick = 0
        self.info = ReservoirInfo(
            name="sim-ring", n_inputs=n_inputs, n_features=n_inputs * params.nodes,
            max_batch=max_batch,
        )

    async def forward(self, u):
        u = self.xp.asarray(u, dtype=self.xp.float64)
        check_inputs(self.info, u)
        rng = None
        if self.params.noise > 0:
            rng = self.xp.random.default_rng([self.seed, self.tick, 0x5EED])
        feats = ring_forward(self.params, u, tick=self.tick, rng=rng)
        self.tick += 1
        return feats.reshape(u.shape[0], -1)

    def vjp(self, u, grad_features):
        """Gradient w.r.t. ``u`` of <grad_features, forward(u)> for the noise-free ring."""
        u = self.xp.asarray(u, dtype=self.xp.float64)
        _, cache = ring_forward(self.params, u, tick=self.tick, keep_cache=True)
        grad = grad_features.reshape(u.shape[0], u.shape[1], self.params.nodes)
        return ring_backward(self.params, cache, grad)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"tick": np.asarray(self.tick, dtype=np.int64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.tick = int(state["tick"])
