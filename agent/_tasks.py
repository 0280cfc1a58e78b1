"""Sequence tasks generated in-process, so they ship offline and are seeded.

``delayed_parity``: a sequence of random bits s_0 … s_{T-1}, one per token; the label
is the parity (XOR) of ``bits`` consecutive bits ending ``delay`` steps before the
end, y = s_{T-1-delay} ⊕ … ⊕ s_{T-delay-bits}. A model that reads the sequence
token by token must remember those bits until the end and combine them
nonlinearly: the classic parity-check test of a reservoir's memory.
"""

from __future__ import annotations

import numpy as np

SAMPLES = 2000  # about the size of the digits set, so runs cost the same


def delayed_parity(seq_len: int, delay: int, bits: int, seed: int,
                   samples: int = SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """Features (samples, seq_len) in {0, 1} and parity labels (samples,).

    Raises ValueError when the parity window does not fit in the sequence.
    """
    if bits < 1 or delay < 0 or delay + bits > seq_len:
        raise ValueError(f"delayed parity: {bits} bits with delay {delay} "
                         f"do not fit a sequence of {seq_len}")
    rng = np.random.default_rng([seed, 0xB175])
    x = rng.integers(0, 2, (samples, seq_len))
    end = seq_len - delay
    y = x[:, end - bits:end].sum(axis=1) % 2
    return x.astype(np.float64), y.astype(np.int64)
