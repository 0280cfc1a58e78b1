"""tools/export_datasets.py and tools/bench_data.py run end to end (figures not asserted)."""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import bench_data  # noqa: E402
import export_datasets  # noqa: E402

from pgt._data import open_dataset  # noqa: E402
from pgt._schema import DataConfig  # noqa: E402


def test_the_exported_csv_and_npz_hold_the_same_data(tmp_path):
    for name in export_datasets.DATASETS:
        csv_path, npz_path = export_datasets.export(name, tmp_path)
        a, b = (open_dataset(DataConfig(path=str(p))) for p in (csv_path, npz_path))
        assert a.class_names == b.class_names and len(a.class_names) >= 2
        for part in ("train", "val", "test"):
            np.testing.assert_array_equal(a.part(part)[0], b.part(part)[0])
            np.testing.assert_array_equal(a.part(part)[1], b.part(part)[1])


def test_bench_data_trains_every_method_through_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results.json"
    assert bench_data.main(["--quick", "--seeds", "0", "--jobs", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    runs = {(r["dataset"], r["estimator"]) for r in results["runs"]}
    assert runs == {(d, e) for d in bench_data.FILES for e in bench_data.PLAN["files"]} | {
        (d, e) for d in bench_data.SERIES for e in bench_data.PLAN["series"]}
    for r in results["runs"]:
        assert r["command"].startswith("pgt train ")
        assert ("--data" in r["command"]) == (r["section"] == "files")
        key = "test_accuracy" if r["section"] == "files" else "test_nmse"
        assert key in r["final"] and key in r["best"]
    assert {b["dataset"] for b in results["baselines"]} == {*bench_data.FILES, *bench_data.SERIES}
    text = capsys.readouterr().out
    assert "| logistic regression, raw features |" in text and "| ridge regression, raw window |" in text
    # Rerunning reuses the finished runs.
    before = (tmp_path / "runs/bench_data/wine-ridge-s0/events.jsonl").read_bytes()
    assert bench_data.main(["--quick", "--seeds", "0", "--jobs", "1", "--sections", "files"]) == 0
    assert (tmp_path / "runs/bench_data/wine-ridge-s0/events.jsonl").read_bytes() == before
