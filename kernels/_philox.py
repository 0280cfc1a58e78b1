"""Counter-based perturbation directions: Philox4x32-10 plus Box-Muller.

Direction k of step s is a pure function of (seed, stream, step, k): it is never
stored or sent, only regenerated where it is needed. That gives bit-exact resume,
cheap accumulation and workers that exchange seeds and scalar losses only.

Element i of a direction reads word i % 4 of the Philox block with counter
(i // 4, k, step, stream) under the key (seed low 32 bits, seed high 32 bits).
The generator is written with plain uint32/uint64 array arithmetic so NumPy and
CuPy produce the same bits (words and Rademacher signs bit for bit; Gaussians up to
the last-bit differences of each library's log/sin/cos). The counter's first word
is the block index, so a direction has at most 2**34 elements. The fused CuPy
kernels (kernels/_fused.py) compute the same element i from the same counter.
"""

from __future__ import annotations

import numpy as np

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF

DISTRIBUTIONS = ("rademacher", "gaussian")


def philox4x32(xp, c0, c1, c2, c3, k0: int, k1: int):
    """Ten Philox4x32 rounds on uint64 arrays holding 32-bit counters; returns 4 words."""
    m0, m1 = xp.uint64(_M0), xp.uint64(_M1)
    mask, shift = xp.uint64(_MASK32), xp.uint64(32)
    for r in range(10):
        key0 = xp.uint64((k0 + r * _W0) & _MASK32)
        key1 = xp.uint64((k1 + r * _W1) & _MASK32)
        p0, p1 = m0 * c0, m1 * c2
        c0, c1, c2, c3 = (p1 >> shift) ^ c1 ^ key0, p1 & mask, (p0 >> shift) ^ c3 ^ key1, p0 & mask
    return c0, c1, c2, c3


def _words(xp, seed: int, stream: int, step: int, ks, size: int):
    """Raw 32-bit words (uint64-held; uint32 on NumPy), shape (len(ks), size)."""
    blocks = (size + 3) // 4
    # Each counter word only as large as it varies (the block index per column, k per
    # row, step and stream constant): the first rounds then run on small arrays and
    # philox4x32's broadcasting widens them to (len(ks), blocks) as the words mix.
    c0 = xp.arange(blocks, dtype=xp.uint64)[None, :]
    c1 = xp.asarray(ks, dtype=xp.uint64)[:, None] & xp.uint64(_MASK32)
    c2 = xp.full((1, 1), step & _MASK32, dtype=xp.uint64)
    c3 = xp.full((1, 1), stream & _MASK32, dtype=xp.uint64)
    out = philox4x32(xp, c0, c1, c2, c3, seed & _MASK32, (seed >> 32) & _MASK32)
    return xp.stack(out, axis=-1).reshape(len(ks), blocks * 4)[:, :size]


def _to_direction(xp, words, distribution: str, dtype):
    if distribution == "rademacher":
        # The top bit: 1 -> +1, 0 -> -1 (plain arithmetic, no scalar-argument where()).
        return (words >> xp.uint64(31)).astype(dtype) * 2.0 - 1.0
    if distribution == "gaussian":
        # Pairs of words (2i, 2i+1) -> two normals by Box-Muller; u1 in (0, 1].
        # ``words`` has an even length (see ``directions``): element i never
        # depends on how long the direction is.
        n, size = words.shape
        w = words.reshape(n, -1, 2).astype(xp.float64)
        u1 = (w[..., 0] + 1.0) / 4294967296.0
        u2 = w[..., 1] / 4294967296.0
        radius = xp.sqrt(-2.0 * xp.log(u1))
        angle = 2.0 * np.pi * u2
        z = xp.stack([radius * xp.cos(angle), radius * xp.sin(angle)], axis=-1)
        return z.reshape(n, size).astype(dtype)
    raise ValueError(f"unknown perturbation distribution {distribution!r}")


def directions(seed: int, step: int, ks, size: int, distribution: str = "rademacher",
               *, stream: int = 0, xp=np, dtype=np.float64):
    """Directions δ_k for every k in ``ks``: an array (len(ks), size)."""
    words = _words(xp, seed, stream, step, list(ks), size + size % 2)
    return _to_direction(xp, words, distribution, dtype)[:, :size]


def accumulate(seed: int, step: int, coeffs, size: int, distribution: str = "rademacher",
               *, stream: int = 0, xp=np, dtype=np.float64, chunk: int = 4, rows=None,
               first: int = 0, total=None):
    """Σ_k coeffs[k] δ_k, regenerating at most ``chunk`` directions at a time.

    ``coeffs`` may be (K,) or (K, size) (a per-element coefficient, used when each
    sample of a batch has its own loss difference). ``rows``: a mapping k -> δ_k of
    directions already generated this step, used instead of regenerating them; the
    sum is the same to the bit either way.

    A sum may be built in parts as its coefficients become known: ``coeffs`` are then
    those of k = first, first + 1, ... and ``total`` is the running sum, added to in
    place and returned. With ``first`` a multiple of ``chunk`` the parts add the same
    chunks in the same order as one call, so the sum is the same to the bit.
    """
    coeffs = xp.asarray(coeffs, dtype=dtype)
    if total is None:
        total = xp.zeros(size, dtype=dtype)
    for start in range(0, coeffs.shape[0], chunk):
        ks = range(first + start, first + min(start + chunk, coeffs.shape[0]))
        if rows is None:
            block = directions(seed, step, ks, size, distribution, stream=stream, xp=xp, dtype=dtype)
        else:
            block = xp.stack([rows[k] for k in ks])
        c = coeffs[start : start + len(ks)]
        total += (c[:, None] * block).sum(axis=0) if c.ndim == 1 else (c * block).sum(axis=0)
    return total
