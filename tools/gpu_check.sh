#!/usr/bin/env bash
# Issue #6 on a bare GPU machine with no package index, in one go (under 5 minutes):
#
#   bash tools/prepare_gpu_wheels.sh          # beforehand, where PyPI is reachable
#   bash tools/gpu_check.sh                   # on the GPU machine, .whl/ beside the code
#
# Needs python3 with NumPy and CuPy (and scikit-learn, pytest, hypothesis: the GPU
# image has them); the project's other dependencies come from the wheels in .whl/,
# installed into /tmp/site. Runs the gpu-marked tests, tools/bench_ring.py, and the
# default job for 1500 steps on the GPU beside the same job on the CPU, then prints
# one table. Logs and bench_ring.json go to $OUT (or /tmp/gpu_check).
# Exit status: 0 when every step ran and the gpu tests passed (the table says
# whether the issue's targets were met), 1 otherwise.
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOGS=${OUT:-/tmp/gpu_check}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1
start=$SECONDS

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { echo "gpu_check: installing .whl/ failed"; exit 1; }
fi
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
# This checkout itself, as the one import package pgt (agent/ is pgt, backends/ and
# kernels/ are pgt.backends and pgt.kernels): built here with the image's setuptools.
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
    --upgrade --target /tmp/site . || { echo "gpu_check: installing this checkout failed"; exit 1; }

"$PY" - <<'EOF' 2>&1 | tee "$LOGS/env.log" || exit 1
import importlib, sys
missing = []
for name in ("numpy", "cupy", "trio", "structlog", "serial", "tomli_w", "cobs", "sklearn",
             "pytest", "pytest_trio", "hypothesis"):
    try:
        importlib.import_module(name)
    except Exception as exc:
        missing.append(f"{name} ({type(exc).__name__}: {exc})")
if missing:
    sys.exit("gpu_check: missing " + ", ".join(missing) + " (see tools/prepare_gpu_wheels.sh)")
from pgt.kernels import get_xp
cp = get_xp("gpu")   # DeviceError, one line, without a usable GPU
import numpy
name = cp.cuda.runtime.getDeviceProperties(0)["name"]
print(f"gpu_check: {name.decode() if isinstance(name, bytes) else name}, CuPy {cp.__version__}, "
      f"NumPy {numpy.__version__}, Python {sys.version.split()[0]}")
EOF

echo "== pytest -m gpu"
timeout 100 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/kernels/test_gpu.py 2>&1 | tee "$LOGS/pytest_gpu.log"
pytest_rc=$?

echo "== tools/bench_ring.py"
timeout 130 "$PY" tools/bench_ring.py --json "$LOGS/bench_ring.json" 2>&1 | tee "$LOGS/bench_ring.log"
bench_rc=$?

echo "== pgt train --device gpu / cpu (default job, 1500 steps, side by side)"
rm -rf /tmp/gpu_check_runs
for device in gpu cpu; do
    timeout 110 "$PY" -m pgt train --device "$device" --set train.steps=1500 \
        --run-dir "/tmp/gpu_check_runs/$device" --quiet >"$LOGS/train_$device.log" 2>&1 &
done
wait
cat "$LOGS/train_gpu.log" "$LOGS/train_cpu.log"

"$PY" - "$LOGS" "$pytest_rc" "$bench_rc" "$((SECONDS - start))" <<'EOF'
import json, pathlib, re, sys
logs, pytest_rc, bench_rc, elapsed = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rows, ok = [], pytest_rc == 0 and bench_rc == 0
env = (logs / "env.log").read_text().strip().splitlines()[-1].removeprefix("gpu_check: ")
rows.append(("device", env))
tail = (logs / "pytest_gpu.log").read_text().strip().splitlines()
rows.append(("pytest -m gpu", (tail[-1] if tail else "no output") + f" (exit {pytest_rc})"))
ok = ok and bool(tail) and " passed" in tail[-1] and "skipped" not in tail[-1]
try:
    bench = json.loads((logs / "bench_ring.json").read_text())
except (OSError, ValueError):
    bench = {"rows": []}
    ok = False
if "copy_bytes_per_s" in bench:
    rows.append(("device copy bandwidth", f"{bench['copy_bytes_per_s'] / 1e9:.0f} GB/s (read + write)"))
for r in bench["rows"]:
    cells = [f"numpy {r.get('numpy_evals_per_s', 0):.3g}/s"]
    if "cupy_fused_evals_per_s" in r:
        cells += [f"plain {r['cupy_plain_evals_per_s']:.3g}/s", f"fused {r['cupy_fused_evals_per_s']:.3g}/s",
                  f"e2e {r['fused_end_to_end_evals_per_s']:.3g}/s",
                  f"fused {r['fused_bytes_per_s'] / 1e9:.0f} GB/s = {100 * r['fused_of_copy']:.0f}% of copy"]
    if "fused_speedup_vs_numpy" in r:
        cells.append(f"{r['fused_speedup_vs_numpy']:.0f}x numpy")
    rows.append((f"ring, {r['probe_samples']} probe-samples", ", ".join(cells)))
big = next((r for r in bench["rows"] if r["probe_samples"] == 1_000_000), None)
if big and "fused_speedup_vs_numpy" in big:
    rows.append(("target: fused >= 100x numpy @1M", "met" if big["fused_speedup_vs_numpy"] >= 100 else "NOT met"))
    rows.append(("target: fused >= 50% of copy @1M", "met" if big["fused_of_copy"] >= 0.5 else "NOT met"))
else:
    rows.append(("targets @1M", "not measured"))
acc = {}
for device in ("gpu", "cpu"):
    text = (logs / f"train_{device}.log").read_text()
    m = re.search(r"test accuracy ([\d.]+)% \(.*, ([^,()]+)\) run ", text)
    acc[device] = float(m.group(1)) if m else None
    rows.append((f"pgt train --device {device}", f"{m.group(1)}% in {m.group(2)}" if m else
                 "failed: " + (text.strip().splitlines() or ["no output"])[-1]))
ok = ok and None not in acc.values()
if None not in acc.values():
    rows.append(("target: gpu accuracy >= cpu", "met" if acc["gpu"] >= acc["cpu"] else "NOT met"))
rows.append(("gpu_check", f"{'all steps ran' if ok else 'a step FAILED'} in {elapsed} s"))
width = max(len(k) for k, _ in rows)
print("\n" + "\n".join(f"{k:<{width}}  {v}" for k, v in rows))
sys.exit(0 if ok else 1)
EOF
