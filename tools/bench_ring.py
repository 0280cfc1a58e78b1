"""Ring evaluations per second: NumPy, CuPy (plain xp path) and CuPy (fused kernel).

    python tools/bench_ring.py [--sizes 1000 10000 100000 1000000] [--numpy-max N]
                               [--dtype float64] [--param noise=0.01 ...] [--json FILE]

One ring evaluation is one probe-sample: a whole input sequence (``inputs`` round
trips, default 16) through the ring, every slot read. For each batch size it
times ``ring_forward`` on NumPy, ``ring_forward`` on CuPy and
``fused_ring_forward`` with inputs and features resident on the device (CUDA
events; the first call, which compiles, is not timed), and the fused kernel once
more end to end (host inputs in, host features out, as ``sim://ring?device=gpu``
does). The fused kernel's achieved memory bandwidth (inputs read + features
written, per second) stands beside the device's measured device-to-device copy
bandwidth (a 1 GiB ``cupy.copyto``, bytes read + written). Ratios are only
meaningful within one run, on one machine. Without CuPy or a GPU the GPU
columns are skipped and the reason is printed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from pgt.kernels import DeviceError, RingParams, fused_ring_forward, get_xp, ring_forward

COPY_BYTES = 1 << 30
MIN_SECONDS = 0.3     # time each measurement for at least this long (or MAX_REPEATS calls)
MAX_REPEATS = 50


def _numpy_seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    repeats = min(MAX_REPEATS, int(MIN_SECONDS / max(once, 1e-9)))
    if repeats < 2:
        return once
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def _cuda_seconds(cp, fn) -> float:
    """Mean seconds per call, timed with CUDA events after one untimed warm-up call."""
    fn()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    fn()
    end.record()
    end.synchronize()
    once = cp.cuda.get_elapsed_time(start, end) / 1e3
    repeats = max(1, min(MAX_REPEATS, int(MIN_SECONDS / max(once, 1e-9))))
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    end.synchronize()
    return cp.cuda.get_elapsed_time(start, end) / 1e3 / repeats


def copy_bandwidth(cp) -> float:
    """Device-to-device copy, bytes read + written per second."""
    a = cp.ones(COPY_BYTES // 8, dtype=cp.float64)
    b = cp.empty_like(a)
    seconds = _cuda_seconds(cp, lambda: cp.copyto(b, a))
    return 2 * a.nbytes / seconds


def _gpu() -> tuple[object | None, str]:
    try:
        cp = get_xp("gpu")
    except DeviceError as exc:
        return None, str(exc)
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    return cp, props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])


def bench(params: RingParams, sizes: list[int], steps: int, dtype, numpy_max: int,
          on_row=lambda result: None) -> dict:
    """Time every size; ``on_row(result)`` after each, so a cut-short run keeps its rows."""
    cp, device = _gpu()
    result = {"ring": params.__dict__, "steps": steps, "dtype": np.dtype(dtype).name,
              "numpy": np.__version__, "cpu": platform.processor() or platform.machine(),
              "gpu": device if cp is not None else None,
              "gpu_skipped": None if cp is not None else device, "rows": []}
    if cp is not None:
        result["cupy"] = cp.__version__
        result["copy_bytes_per_s"] = copy_bandwidth(cp)
    rng = np.random.default_rng(0)
    for size in sizes:
        u = rng.uniform(-1.0, 1.0, (size, steps)).astype(dtype)
        row = {"probe_samples": size}
        if size <= numpy_max:
            row["numpy_s"] = _numpy_seconds(lambda: ring_forward(params, u, seed=0))
        if cp is not None:
            du = cp.asarray(u)
            row["cupy_plain_s"] = _cuda_seconds(cp, lambda: ring_forward(params, du, seed=0))
            row["cupy_fused_s"] = _cuda_seconds(cp, lambda: fused_ring_forward(params, du, seed=0))
            row["fused_end_to_end_s"] = _cuda_seconds(
                cp, lambda: fused_ring_forward(params, cp.asarray(u), seed=0).get())
            moved = u.nbytes + u.nbytes * params.nodes      # inputs read, features written
            row["fused_bytes_per_s"] = moved / row["cupy_fused_s"]
            row["fused_of_copy"] = row["fused_bytes_per_s"] / result["copy_bytes_per_s"]
            del du
            cp.get_default_memory_pool().free_all_blocks()
        for key in ("numpy", "cupy_plain", "cupy_fused", "fused_end_to_end"):
            if f"{key}_s" in row:
                row[f"{key}_evals_per_s"] = size / row[f"{key}_s"]
        if "numpy_s" in row and "cupy_fused_s" in row:
            row["fused_speedup_vs_numpy"] = row["numpy_s"] / row["cupy_fused_s"]
        result["rows"].append(row)
        on_row(result)
    return result


def _fmt(value, scale=1.0, spec=".3g") -> str:
    return "-" if value is None else format(value / scale, spec)


def table(result: dict) -> str:
    lines = [f"ring evaluations per second ({result['dtype']}, {result['steps']} round trips, "
             f"{result['ring']['nodes']} nodes); GPU: {result['gpu'] or 'none'}"]
    if result["gpu_skipped"]:
        lines.append(f"GPU columns skipped: {result['gpu_skipped']}")
    head = ("probe-samples", "numpy", "cupy plain", "cupy fused", "fused e2e", "fused/numpy",
            "fused GB/s", "of copy")
    lines.append("  ".join(f"{h:>13}" for h in head))
    for row in result["rows"]:
        cells = (str(row["probe_samples"]), _fmt(row.get("numpy_evals_per_s")),
                 _fmt(row.get("cupy_plain_evals_per_s")), _fmt(row.get("cupy_fused_evals_per_s")),
                 _fmt(row.get("fused_end_to_end_evals_per_s")), _fmt(row.get("fused_speedup_vs_numpy")),
                 _fmt(row.get("fused_bytes_per_s"), 1e9), _fmt(row.get("fused_of_copy"), 0.01, ".0f") + "%"
                 if "fused_of_copy" in row else "-")
        lines.append("  ".join(f"{c:>13}" for c in cells))
    if "copy_bytes_per_s" in result:
        lines.append(f"device-to-device copy: {result['copy_bytes_per_s'] / 1e9:.0f} GB/s "
                     f"(bytes read + written, {COPY_BYTES >> 20} MiB copied)")
    return "\n".join(lines)


def _ring_params(pairs: list[str]) -> RingParams:
    types = RingParams.field_types()
    kwargs = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        if key not in types:
            raise SystemExit(f"bench_ring: unknown ring parameter {key!r} (known: {', '.join(types)})")
        kwargs[key] = types[key](raw)
    return RingParams(**kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--steps", type=int, default=16, help="round trips per sample (the ring's inputs)")
    parser.add_argument("--numpy-max", type=int, default=1_000_000, help="largest batch timed on NumPy")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="ring parameter (kernels.RingParams), repeatable")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    command = "python tools/bench_ring.py " + " ".join(argv if argv is not None else sys.argv[1:])

    def save(result: dict) -> None:
        result["command"] = command
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")

    result = bench(_ring_params(args.param), args.sizes, args.steps, np.dtype(args.dtype),
                   args.numpy_max, on_row=save)
    save(result)
    print(table(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
