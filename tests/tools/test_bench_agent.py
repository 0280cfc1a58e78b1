"""tools/bench_agent.py runs and reports what it measured (its figures are not asserted)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import bench_agent  # noqa: E402


def test_the_duty_cycle_benchmark_scales_k_with_the_rack_or_fixes_it(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert bench_agent.main(["--latencies-ms", "5", "--devices", "1", "2", "--seconds", "0.2",
                             "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["devices"], r["k"]) for r in rows] == [(1, 16), (2, 32)]
    for r in rows:
        assert 0.0 < r["duty_min"] <= r["duty_mean"] <= 1.0 and r["steps"] >= 2
        # probes/s over N/L is the mean duty cycle: every probe is one L-long forward
        assert abs(r["ratio"] - r["duty_mean"]) < 1e-3
    assert "| 5 | 2 | 32 |" in capsys.readouterr().out
    bench_agent.main(["--latencies-ms", "5", "--devices", "2", "--k", "4", "--seconds", "0.1",
                      "--json", str(out)])
    assert [r["k"] for r in json.loads(out.read_text())["rows"]] == [4]
