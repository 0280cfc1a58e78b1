"""tools/bench_twin.py runs every device, method and ablation (figures not asserted)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import bench_twin  # noqa: E402


def test_bench_twin_runs_every_device_and_ablation(tmp_path, capsys):
    out = tmp_path / "twin.json"
    assert bench_twin.main(["--steps", "3", "--seeds", "0", "--jobs", "1",
                            "--calibration-fits", "5", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    methods = {(r["device"], r["method"]) for r in rows if r["section"] == "rings"}
    assert len(methods) == 4 * 4
    in_silico = [r for r in rows if r["method"] == "in-silico on the twin"]
    assert all(r["ring_evals"] > 0 and 0 <= r["test_accuracy"] <= 1 for r in in_silico)
    assert {r["method"] for r in rows if r["section"] == "transformer"} == {"twin", "backprop"}
    assert "| emu: noise 1 %, drift 5 % | twin |" in capsys.readouterr().out
