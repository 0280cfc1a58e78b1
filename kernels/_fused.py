"""Fused CuPy kernels for the two hot spots, each beside the NumPy twin that is its oracle.

``fused_ring_forward``: the whole ring map (every sample, every round trip, every
slot, detector noise included) in one launch. One CUDA thread owns one (sample,
slot); a block holds several samples' slots, and the neighbour coupling reads the
previous round trip from double-buffered shared memory, one ``__syncthreads`` per
round trip. Its twin ``ring_twin`` runs the same per-(sample, slot) arithmetic in
the same order with NumPy, vectorised over the threads.

``fused_accumulate``: Σ_k c_k δ_k regenerated from (seed, step, k). One thread owns
one Philox block (four elements) and loops over k, so no direction is ever held.
Its twin is ``accumulate_twin``.

The twins are checked against ``ring_forward`` / ``accumulate`` on every machine
(tests/kernels/test_fused.py); the kernels are checked against the twins' results
on a GPU (tests/kernels/test_gpu.py). A twin and its kernel differ only where CUDA's
libm, or its fused multiply-add, rounds differently from NumPy.

CuPy is imported inside the functions that launch kernels, never at import.
"""

from __future__ import annotations

import functools

import numpy as np

from pgt.kernels._philox import _MASK32, philox4x32
from pgt.kernels._ring import NOISE_STREAM, RingParams

_THREADS = 256      # target threads per block of the ring kernel
MAX_NODES = 1024    # one block must hold one sample's slots

_SOURCE = r"""
typedef REAL real;

__device__ __forceinline__ void sin_cos(double x, double* s, double* c) { sincos(x, s, c); }
__device__ __forceinline__ void sin_cos(float x, float* s, float* c) { sincosf(x, s, c); }

// Philox4x32-10 on c in place, exactly as kernels/_philox.py:philox4x32.
__device__ __forceinline__ void philox(unsigned int c[4], unsigned int k0, unsigned int k1) {
    for (unsigned int r = 0; r < 10; ++r) {
        unsigned int key0 = k0 + r * 0x9E3779B9u, key1 = k1 + r * 0xBB67AE85u;
        unsigned long long p0 = 0xD2511F53ull * c[0], p1 = 0xCD9E8D57ull * c[2];
        unsigned int n0 = (unsigned int)(p1 >> 32) ^ c[1] ^ key0;
        unsigned int n2 = (unsigned int)(p0 >> 32) ^ c[3] ^ key1;
        c[0] = n0; c[1] = (unsigned int)p1; c[2] = n2; c[3] = (unsigned int)p0;
    }
}

// Box-Muller on the word pair (w0, w1): element 2p reads the cosine, 2p+1 the sine.
__device__ __forceinline__ double box_muller(unsigned int w0, unsigned int w1, int odd) {
    double u1 = ((double)w0 + 1.0) / 4294967296.0;
    double u2 = (double)w1 / 4294967296.0;
    double radius = sqrt(-2.0 * log(u1));
    double angle = 6.283185307179586 * u2;
    return odd ? radius * sin(angle) : radius * cos(angle);
}

// Element i of direction (k, step, stream): word i % 4 of block i / 4.
__device__ __forceinline__ double direction_at(long long i, unsigned int k, unsigned int step,
        unsigned int stream, unsigned int key0, unsigned int key1, int gaussian) {
    unsigned int c[4] = {(unsigned int)(i >> 2), k, step, stream};
    philox(c, key0, key1);
    int w = (int)(i & 3);
    if (!gaussian) return (c[w] >> 31) ? 1.0 : -1.0;
    int p = w & 2;
    return box_muller(c[p], c[p + 1], w & 1);
}

extern "C" __global__ void ring_fused(
        const real* __restrict__ u, const real* __restrict__ mask, real* __restrict__ feats,
        long long batch, int steps, int nodes, int per_block,
        real g0, real kappa, real inject, real bias, real p_sat, real nu, real tap, real centre,
        real noise, unsigned int tick, unsigned int stream, unsigned int key0, unsigned int key1) {
    extern __shared__ unsigned char shared_bytes[];
    real* buf = (real*)shared_bytes;               // [2 round trips][x, y][width]
    const int width = per_block * nodes;
    const int t = threadIdx.x;
    const int s = t / nodes, j = t - s * nodes;
    const long long b = (long long)blockIdx.x * per_block + s;
    const bool live = b < batch;
    const int left = s * nodes + (j + nodes - 1) % nodes;
    const int right = s * nodes + (j + 1) % nodes;
    const real one = (real)1, m = mask[j];
    buf[t] = 0; buf[width + t] = 0;
    __syncthreads();
    for (int n = 0; n < steps; ++n) {
        const real* xin = buf + (n & 1) * 2 * width;
        const real* yin = xin + width;
        real* xout = buf + ((n + 1) & 1) * 2 * width;
        real* yout = xout + width;
        const real mu = (live ? u[b * steps + n] : (real)0) * m;
        const real cx = tap * xin[left] + centre * xin[t] + tap * xin[right];
        const real cy = tap * yin[left] + centre * yin[t] + tap * yin[right];
        const real power = cx * cx + cy * cy;
        const real sat = one / (one + power / p_sat);
        real si, co;
        sin_cos(nu * power, &si, &co);
        const real drive = g0 * (one + kappa * mu);
        const real rx = cx * co - cy * si, ry = cx * si + cy * co;
        const real ax = drive * sat * rx + inject * mu + bias;
        const real ay = drive * sat * ry;
        xout[t] = ax; yout[t] = ay;
        if (live) {
            const long long i = (b * steps + n) * nodes + j;
            real f = ax * ax + ay * ay;
            if (noise > (real)0) {
                f *= one + noise * (real)direction_at(i, 0u, tick, stream, key0, key1, 1);
            }
            feats[i] = f;
        }
        __syncthreads();
    }
}

extern "C" __global__ void accumulate_fused(
        const real* __restrict__ coeffs, real* __restrict__ out, long long size, int n_k,
        int per_element, unsigned int step, unsigned int stream, unsigned int key0,
        unsigned int key1, int gaussian) {
    const long long blocks = (size + 3) >> 2;
    for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < blocks;
         q += (long long)gridDim.x * blockDim.x) {
        real acc[4] = {0, 0, 0, 0};
        for (int k = 0; k < n_k; ++k) {
            unsigned int c[4] = {(unsigned int)q, (unsigned int)k, step, stream};
            philox(c, key0, key1);
            double d[4];
            if (gaussian) {
                d[0] = box_muller(c[0], c[1], 0); d[1] = box_muller(c[0], c[1], 1);
                d[2] = box_muller(c[2], c[3], 0); d[3] = box_muller(c[2], c[3], 1);
            } else {
                for (int w = 0; w < 4; ++w) d[w] = (c[w] >> 31) ? 1.0 : -1.0;
            }
            for (int w = 0; w < 4; ++w) {
                const long long i = 4 * q + w;
                if (i < size) {
                    const real coeff = per_element ? coeffs[(long long)k * size + i] : coeffs[k];
                    acc[w] += coeff * (real)d[w];
                }
            }
        }
        for (int w = 0; w < 4; ++w) {
            const long long i = 4 * q + w;
            if (i < size) out[i] = acc[w];
        }
    }
}
"""

_CTYPES = {np.dtype(np.float64): "double", np.dtype(np.float32): "float"}


def _real(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in _CTYPES:
        raise TypeError(f"fused kernels: dtype must be float32 or float64, got {dtype}")
    return dtype


@functools.cache
def _module(dtype: np.dtype):
    """The compiled CUDA module for one real type (compiled once per process)."""
    import cupy

    return cupy.RawModule(code=_SOURCE.replace("REAL", _CTYPES[dtype]))


def _key(seed: int) -> tuple[np.uint32, np.uint32]:
    return np.uint32(seed & _MASK32), np.uint32((seed >> 32) & _MASK32)


def _block_shape(nodes: int) -> tuple[int, int]:
    """(samples per block, threads per block) of the ring kernel."""
    per_block = max(1, _THREADS // nodes)
    return per_block, per_block * nodes


def fused_ring_supported(params: RingParams) -> bool:
    """Whether the fused kernel runs this ring: one block must hold a sample's slots, and
    it models the plain square-law diode (no reference line, detuning, noise floor,
    gain walk, ADC or per-sample clock)."""
    return (params.nodes <= MAX_NODES and params.ref == 0.0 and params.detune == 0.0
            and params.floor == 0.0 and params.walk == 0.0 and params.bits == 0
            and params.clock == "call")


def fused_ring_forward(params: RingParams, u, *, tick: int = 0, seed: int | None = None):
    """``ring_forward(params, u, tick=tick, seed=seed)`` as one CuPy kernel launch.

    ``u`` is a CuPy array (B, T) of float32 or float64; returns CuPy features
    (B, T, N) in that dtype. Raises ValueError for noise without a seed or more
    than MAX_NODES slots.
    """
    import cupy

    if params.noise > 0.0 and seed is None:
        raise ValueError("ring: noise > 0 needs a seed")
    if not fused_ring_supported(params):
        raise ValueError(f"fused ring: at most {MAX_NODES} nodes, got {params.nodes}")
    dtype = _real(u.dtype)
    u = cupy.ascontiguousarray(u)
    batch, steps = u.shape
    feats = cupy.empty((batch, steps, params.nodes), dtype=dtype)
    per_block, threads = _block_shape(params.nodes)
    grid = (batch + per_block - 1) // per_block
    real = dtype.type
    key0, key1 = _key(0 if seed is None else seed)
    args = (
        u, params.mask(cupy, dtype), feats, np.int64(batch), np.int32(steps),
        np.int32(params.nodes), np.int32(per_block),
        real(params.gain_at(tick)), real(params.kappa), real(params.inject), real(params.bias),
        real(params.p_sat), real(params.nu), real(params.tap), real(1.0 - 2.0 * params.tap),
        real(params.noise), np.uint32(tick & _MASK32), np.uint32(NOISE_STREAM), key0, key1,
    )
    if batch and steps:
        kernel = _module(dtype).get_function("ring_fused")
        kernel((grid,), (threads,), args, shared_mem=4 * threads * dtype.itemsize)
    return feats


def fused_accumulate(seed: int, step: int, coeffs, size: int, distribution: str = "rademacher",
                     *, stream: int = 0, dtype=np.float64):
    """``accumulate(...)`` as one CuPy kernel: a CuPy array (size,) of Σ_k c_k δ_k.

    ``coeffs`` is (K,) or (K, size), host or device; no direction is materialised.
    """
    import cupy

    if distribution not in ("rademacher", "gaussian"):
        raise ValueError(f"unknown perturbation distribution {distribution!r}")
    dtype = _real(dtype)
    coeffs = cupy.ascontiguousarray(cupy.asarray(coeffs, dtype=dtype))
    out = cupy.zeros(size, dtype=dtype)
    blocks = (size + 3) // 4
    if blocks == 0 or coeffs.shape[0] == 0:
        return out
    threads = 256
    grid = min((blocks + threads - 1) // threads, 65535 * 8)
    key0, key1 = _key(seed)
    kernel = _module(dtype).get_function("accumulate_fused")
    kernel((grid,), (threads,), (
        coeffs, out, np.int64(size), np.int32(coeffs.shape[0]), np.int32(coeffs.ndim == 2),
        np.uint32(step & _MASK32), np.uint32(stream & _MASK32), key0, key1,
        np.int32(distribution == "gaussian"),
    ))
    return out


# -- NumPy twins: the kernels' arithmetic, vectorised over their threads ----------------

def _twin_words(seed: int, blocks, k: int, step: int, stream: int):
    """The four Philox words of each block index in ``blocks`` (uint64 arrays)."""
    c = [np.asarray(blocks, dtype=np.uint64) & np.uint64(_MASK32)]
    c += [np.full(c[0].shape, v & _MASK32, dtype=np.uint64) for v in (k, step, stream)]
    return philox4x32(np, *c, seed & _MASK32, (seed >> 32) & _MASK32)


def _twin_box_muller(w0, w1, odd):
    u1 = (w0.astype(np.float64) + 1.0) / 4294967296.0
    u2 = w1.astype(np.float64) / 4294967296.0
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = 6.283185307179586 * u2
    return np.where(odd, radius * np.sin(angle), radius * np.cos(angle))


def direction_at_twin(seed: int, step: int, k: int, index, distribution: str, stream: int = 0):
    """Element ``index`` (array of ints) of direction k, as the kernels' ``direction_at``."""
    index = np.asarray(index, dtype=np.int64)
    words = np.stack(_twin_words(seed, index >> 2, k, step, stream))   # (4, ...)
    w = index & 3
    pick = lambda at: np.take_along_axis(words, at[None], axis=0)[0]   # noqa: E731
    if distribution == "rademacher":
        return np.where((pick(w) >> np.uint64(31)) == 1, 1.0, -1.0)
    pair = w & 2
    return _twin_box_muller(pick(pair), pick(pair + 1), (w & 1) == 1)


def ring_twin(params: RingParams, u: np.ndarray, *, tick: int = 0, seed: int | None = None):
    """What ``ring_fused`` computes, with NumPy: one array lane per (sample, slot) thread.

    Neighbours are read by index from the previous round trip (the kernel's shared
    buffer); the noise of element i comes from its own Philox block, as in the kernel.
    """
    if params.noise > 0.0 and seed is None:
        raise ValueError("ring: noise > 0 needs a seed")
    dtype = u.dtype
    batch, steps = u.shape
    nodes = params.nodes
    j = np.arange(nodes)
    left, right = (j + nodes - 1) % nodes, (j + 1) % nodes
    real = dtype.type
    tap, centre, one = real(params.tap), real(1.0 - 2.0 * params.tap), real(1.0)
    g0, kappa, inject = real(params.gain_at(tick)), real(params.kappa), real(params.inject)
    bias, p_sat, nu, noise = real(params.bias), real(params.p_sat), real(params.nu), real(params.noise)
    m = params.mask(np, dtype)
    xin = np.zeros((batch, nodes), dtype=dtype)
    yin = np.zeros_like(xin)
    feats = np.empty((batch, steps, nodes), dtype=dtype)
    b = np.arange(batch, dtype=np.int64)[:, None]
    for n in range(steps):
        mu = u[:, n : n + 1] * m
        cx = tap * xin[:, left] + centre * xin + tap * xin[:, right]
        cy = tap * yin[:, left] + centre * yin + tap * yin[:, right]
        power = cx * cx + cy * cy
        sat = one / (one + power / p_sat)
        si, co = np.sin(nu * power), np.cos(nu * power)
        drive = g0 * (one + kappa * mu)
        rx, ry = cx * co - cy * si, cx * si + cy * co
        xin = drive * sat * rx + inject * mu + bias
        yin = drive * sat * ry
        f = xin * xin + yin * yin
        if noise > 0:
            i = (b * steps + n) * nodes + j
            z = direction_at_twin(seed, tick, 0, i, "gaussian", NOISE_STREAM).astype(dtype)
            f = f * (one + noise * z)
        feats[:, n, :] = f
    return feats


def accumulate_twin(seed: int, step: int, coeffs, size: int, distribution: str = "rademacher",
                    *, stream: int = 0, dtype=np.float64) -> np.ndarray:
    """What ``accumulate_fused`` computes, with NumPy: one lane per element, a loop over k."""
    coeffs = np.asarray(coeffs, dtype=dtype)
    index = np.arange(size, dtype=np.int64)
    acc = np.zeros(size, dtype=dtype)
    for k in range(coeffs.shape[0]):
        d = direction_at_twin(seed, step, k, index, distribution, stream).astype(dtype)
        acc += coeffs[k] * d     # a scalar, or this direction's row of coefficients
    return acc
