"""tools/sweep_two_nodes.py: a head and a ring_a node started with ``ray start`` on this
machine, a ``pgt sweep --address`` whose ring_a trials all run on the ring_a node; and
its clean-up stops that cluster's processes only."""

import csv
import io
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import sweep_two_nodes  # noqa: E402


def _alive(proc: subprocess.Popen) -> bool:
    return proc.poll() is None


def test_clean_up_stops_the_folder_s_processes_and_their_children_and_nothing_else(tmp_path):
    folder = tmp_path / "cluster"
    folder.mkdir()
    # a stand-in for a Ray daemon: its command line names the folder, its child does not
    ours = subprocess.Popen(["sh", "-c", "sleep 300 & wait", str(folder / "raylet")])
    other = subprocess.Popen(["sleep", "300"])
    try:
        deadline = time.monotonic() + 10
        found: list[int] = []
        while time.monotonic() < deadline and len(found) < 2:
            found = sweep_two_nodes._processes_under(folder)
            time.sleep(0.05)
        assert ours.pid in found and len(found) == 2, found     # sh and its sleep
        assert other.pid not in found
        sweep_two_nodes._stop_cluster(folder)
        ours.wait(timeout=10)
        assert sweep_two_nodes._processes_under(folder) == []
        assert _alive(other)
    finally:
        for proc in (ours, other):
            if _alive(proc):
                proc.kill()
                proc.wait()


@pytest.mark.slow
def test_ring_a_trials_run_on_the_ring_a_node_of_a_two_node_cluster(tmp_path, capsys):
    pytest.importorskip("ray", reason="pgt[sweep] (Ray Tune) is not installed")
    code = sweep_two_nodes.run(tmp_path, seeds=2, steps=4)
    out = capsys.readouterr().out
    assert code == 0, out
    rows = list(csv.DictReader(io.StringIO((tmp_path / "sweep" / "sweep.csv").read_text())))
    ring_node = out.split("every trial requiring ring_a ran on node ")[1].split()[0]
    assert len(rows) == 4
    assert {r["node_id"] for r in rows if r["reservoir.requires"] == "ring_a"} == {ring_node}
