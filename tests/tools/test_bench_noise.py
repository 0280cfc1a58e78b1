"""tools/bench_noise.py runs every ring, condition and estimator (figures not asserted)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import bench_noise  # noqa: E402


def test_bench_noise_runs_every_condition(tmp_path, capsys):
    out, png = tmp_path / "noise.json", tmp_path / "noise.png"
    assert bench_noise.main(["--seeds", "0", "--jobs", "1", "--steps-scale", "0.002",
                             "--json", str(out), "--plot", str(png)]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 2 * 6 * 3 and png.stat().st_size > 1000
    urls = {r["url"] for r in rows if r["ring"] == "memory"}
    assert "sim://ring?preset=memory&walk=0.05&clock=sample" in urls
    assert any("floor=" in u for u in urls)
    assert "| gain walk 2 %, per-sample clock |" in capsys.readouterr().out
