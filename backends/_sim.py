"""The ``sim://`` backend: the simulated ring behind the Reservoir protocol.

On ``device="gpu"`` the ring runs on CuPy (the fused one-launch kernel of
kernels/_fused.py unless ``fused=False``) and ``forward`` hands back host NumPy
features, so the agent's NumPy code is the same for both devices. The kernels are
launched asynchronously; ``forward`` then waits for them in a worker thread (a CUDA
event, without the interpreter lock), so the trio loop goes on feeding other rings
and finishing their results while the GPU works. The trainer's digital layers,
directions and accumulation stay on the CPU for now.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import trio

from pgt.backends._protocol import ReservoirInfo, check_inputs
from pgt.kernels import (
    RingParams,
    fused_ring_forward,
    fused_ring_supported,
    get_xp,
    gain_path,
    needs_gain_path,
    ring_backward,
    ring_forward,
    to_numpy,
)


async def gpu_work_done(cupy) -> None:
    """Wait, without blocking the trio loop, for the work queued so far on CuPy's
    current stream: a CUDA event recorded now, synchronized in a worker thread."""
    event = cupy.cuda.get_current_stream().record()
    if not event.done:
        await trio.to_thread.run_sync(event.synchronize, abandon_on_cancel=True)


class SimRing:
    """A simulated ring reached exactly as hardware is: ``await forward(u)``.

    The ring keeps a clock (one tick per forward call) that drives its gain drift
    and, with ``seed``, its detector noise, so a run is reproducible from
    (seed, tick), on either device, and a resume restores the clock through
    ``state_dict``. Raises DeviceError (one line) when ``device`` cannot be used.
    """

    def __init__(self, params: RingParams, *, n_inputs: int = 16, max_batch: int = 65536,
                 seed: int = 0, device: str = "cpu", fused: bool = True) -> None:
        self.params = params
        self.xp = get_xp(device)
        self.fused = fused and device == "gpu" and fused_ring_supported(params)
        self.seed = seed
        self.tick = 0
        self.walk = None   # the gain walk's state (kernels.gain_path), when it has one
        self.info = ReservoirInfo(
            name="sim-ring", n_inputs=n_inputs, n_features=n_inputs * params.nodes,
            max_batch=max_batch,
        )

    async def forward(self, u) -> np.ndarray:
        u = self.xp.asarray(u, dtype=self.xp.float64)
        check_inputs(self.info, u)
        p = self.params
        if needs_gain_path(p):   # the gain moves within the call, or by its walk
            count = u.shape[0] if p.clock == "sample" else 1
            gains, self.walk = gain_path(p, self.tick, count, self.seed, self.walk)
            feats = ring_forward(p, u, tick=self.tick, seed=self.seed,
                                 gains=gains if count > 1 else gains[:1].repeat(u.shape[0]))
            self.tick += count
        else:
            run = fused_ring_forward if self.fused else ring_forward
            feats = run(p, u, tick=self.tick, seed=self.seed)
            self.tick += 1
        if self.xp is not np:
            await gpu_work_done(self.xp)
        return to_numpy(feats.reshape(u.shape[0], -1))

    async def forward_sequence(self, u) -> np.ndarray:
        """Features of sequences of consecutive samples: ``u`` (P, R, n_inputs), row r of
        each sequence driven into the ring right after row r-1, with no rest between
        them (the ring's state runs on). Returns (P, R, n_features). One call on the
        ring's clock (or P·R ticks on a per-sample clock)."""
        u = self.xp.asarray(u, dtype=self.xp.float64)
        if u.ndim != 3 or u.shape[2] != self.info.n_inputs:
            raise ValueError(f"{self.info.name}: sequences must have shape (P, R, "
                             f"{self.info.n_inputs}), got {tuple(u.shape)}")
        if float(abs(u).max()) > 1.0:
            raise ValueError(f"{self.info.name}: inputs must lie in [-1, 1]")
        p, rows, n = u.shape
        flat = u.reshape(p, rows * n)
        params = self.params
        if needs_gain_path(params):
            count = p * rows if params.clock == "sample" else 1
            gains, self.walk = gain_path(params, self.tick, count, self.seed, self.walk)
            gains = gains[::rows] if count > 1 else gains[:1].repeat(p)   # a gain per sequence
            feats = ring_forward(params, flat, tick=self.tick, seed=self.seed, gains=gains)
            self.tick += count
        else:
            feats = ring_forward(params, flat, tick=self.tick, seed=self.seed)
            self.tick += 1
        return to_numpy(feats.reshape(p, rows, n * params.nodes))

    def vjp(self, u, grad_features) -> np.ndarray:
        """Gradient w.r.t. ``u`` of <grad_features, forward(u)> for the noise-free ring."""
        u = self.xp.asarray(u, dtype=self.xp.float64)
        clean = dataclasses.replace(self.params, noise=0.0, floor=0.0, bits=0)   # noise-free
        _, cache = ring_forward(clean, u, tick=self.tick, keep_cache=True)
        grad = self.xp.asarray(grad_features).reshape(u.shape[0], u.shape[1], self.params.nodes)
        return to_numpy(ring_backward(self.params, cache, grad))

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {"tick": np.asarray(self.tick, dtype=np.int64)}
        if self.walk is not None:
            state["walk"] = np.asarray(self.walk, dtype=np.float64)
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.tick = int(state["tick"])
        self.walk = np.array(state["walk"]) if "walk" in state else None
