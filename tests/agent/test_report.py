"""`pgt plot` and `pgt report --quick`: they write their PNGs, table and results."""

import json

from pgt._report import PLAN
from pgt.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def test_plot_draws_a_run_and_report_quick_writes_every_section(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", "--quick", "--out", str(out), "--jobs", "1", "--seeds", "0"]) == 0
    printed = capsys.readouterr().out
    assert "interface is" in printed and "report.md" in printed
    text = (out / "report.md").read_text()
    for section in ("dense", "transformer", "memory"):
        assert (out / f"{section}.png").read_bytes().startswith(PNG)
        assert f"({section}.png)" in text
    for job in PLAN:
        assert f"| {job.label} |" in text
    results = json.loads((out / "results.json").read_text())
    assert results["quick"] and len(results["rows"]) == len(PLAN)
    assert {r["section"] for r in results["rows"]} == {"dense", "transformer", "memory"}

    run = next((out / "runs").iterdir())
    assert main(["plot", str(run)]) == 0
    assert (run / "curves.png").read_bytes().startswith(PNG)
    assert main(["plot", str(run), "--out", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").read_bytes().startswith(PNG)

    # A second report reuses the finished runs instead of training them again.
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/events.jsonl")}
    assert main(["report", "--quick", "--out", str(out), "--jobs", "1", "--seeds", "0"]) == 0
    assert before == {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/events.jsonl")}


def test_plot_of_a_missing_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err.startswith("pgt: no events.jsonl")
