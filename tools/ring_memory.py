"""Short-term memory capacity of the simulated ring, beside published real rings.

    python tools/ring_memory.py [--json FILE]

Prints r²(k) summed over delays (kernels.memory_capacity) for the default ring and
for a few operating points, so the README's figure can be regenerated.
"""

from __future__ import annotations

import argparse
import json

from pgt.kernels import RingParams
from pgt.kernels._memory import memory_capacity

POINTS = [
    ("default", {}),
    ("gain 0.5", {"gain": 0.5}),
    ("gain 0.95", {"gain": 0.95}),
    ("carrier bias 0.2", {"bias": 0.2}),
    ("bias 0.2, gain 0.9, p_sat 3, nu 0.5", {"bias": 0.2, "gain": 0.9, "p_sat": 3.0, "nu": 0.5}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    rows = []
    print("| ring | memory capacity (3 input sequences: mean, min-max) |")
    print("|---|---|")
    for label, changes in POINTS:
        values = [memory_capacity(RingParams(**changes), seed=s) for s in range(3)]
        rows.append({"ring": label, "params": changes, "capacity": values})
        mean = sum(values) / len(values)
        print(f"| {label} | {mean:.2f} ({min(values):.2f}-{max(values):.2f}) |")
    print("| published real rings (Watt & Kostylev and later) | 4.7-5.5 |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
