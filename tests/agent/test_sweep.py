"""``pgt sweep`` on Ray Tune: the spec's checks, the grid and the search, and a sweep
whose driver is killed and started again.

The sweeps run as real ``pgt sweep`` processes (Ray in-process in each, on this
machine's cores); the spec checks run in this process and need no Ray.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pgt._config import load_config
from pgt._logging import EVENTS_FILE, read_events
from pgt.cli import main

RAY = pytest.importorskip("ray", reason="pgt[sweep] (Ray Tune) is not installed")

TINY = """
[base]
train.steps = {steps}
train.eval_every = {eval_every}
train.checkpoint_every = {every}
train.checkpoint_seconds = 1000.0
data.batch_size = 8
reservoir.url = "sim://ring?nodes=4"
"""


def _sweep(spec: Path, out: Path, *extra: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pgt", "sweep", str(spec), "--out", str(out),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"pgt sweep exited {proc.returncode}: {err[-2000:]}"
    return out


def _stopped(run_dir: Path) -> bool:
    path = run_dir / EVENTS_FILE
    return path.is_file() and any(e.get("event") == "run_stop" for e in read_events(path))


def _csv_without(text: str, *columns: str) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in columns}
            for row in csv.DictReader(io.StringIO(text))]


# -- the spec --------------------------------------------------------------------------


@pytest.mark.parametrize("body, names", [
    ("[base]\n[grid]\n\"estimator.kk\" = [1, 2]\n", "estimator.kk"),
    ("[base]\nestimator.name = \"nope\"\n[grid]\n\"estimator.k\" = [1]\n", "estimator.name"),
    ("[base]\n[grid]\n\"estimator.k\" = [4, 0]\n", "estimator.k"),
    ("[base]\n[grid]\n\"estimator.k\" = []\n", "estimator.k"),
    ("[base]\n", "nothing to sweep"),
    ("[base]\n[grid]\n\"estimator.k\" = [1]\n[search]\ntrials = 2\n", "not both"),
    ("[base]\n[search]\n\"optimizer.lr\" = { low = 0.1, high = 0.01 }\ntrials = 2\n",
     "optimizer.lr"),
    ("[base]\n[search]\n\"optimizer.lr\" = { low = 0.0, high = 0.1, log = true }\ntrials = 2\n",
     "log-scaled"),
    ("[base]\n[search]\n\"optimizer.lr\" = { low = 0.001, high = 0.1 }\n", "search.trials"),
    ("[base]\n[search]\ntrials = 2\n\"optimizer.lr\" = { low = 0.001, hi = 0.1 }\n", "'hi'"),
    ("[sweep]\nseeds = [0, 0]\n[grid]\n\"estimator.k\" = [1]\n", "seed twice"),
    ("[sweep]\nmetric = \"test_accuracy\"\n[grid]\n\"estimator.k\" = [1]\n", "test_accuracy"),
    ("[sweep]\nmetric = \"val_nmse\"\n[grid]\n\"estimator.k\" = [1]\n", "val_nmse"),
    ("[grid]\n\"run_dir\" = [\"x\"]\n", "run_dir"),
    ("[grid]\n\"reservoir.requires\" = [\"CPU\"]\n", "reservoir.requires"),
    ("[bsae]\n[grid]\n\"estimator.k\" = [1]\n", "[bsae]"),
    ("[grid\n", "not valid TOML"),
])
def test_a_bad_spec_is_one_line_naming_what_is_wrong_and_runs_nothing(tmp_path, capsys, body,
                                                                      names):
    spec = tmp_path / "spec.toml"
    spec.write_text(body)
    code = main(["sweep", str(spec), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("pgt: sweep: ") and err.count("\n") == 1, err
    assert names in err
    assert not (tmp_path / "out").exists()


def test_without_ray_the_sweep_says_how_to_install_it(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text("[grid]\n\"estimator.k\" = [1]\n")
    blocked = ("import sys; sys.modules['ray'] = None; from pgt.cli import main; "
               f"sys.exit(main(['sweep', {str(spec)!r}, '--out', {str(tmp_path / 'o')!r}]))")
    done = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == ("pgt: sweep: Ray Tune is not installed: "
                                   "pip install 'pgt[sweep]' (Ray Tune and Optuna)")
    assert not (tmp_path / "o").exists()


# -- a grid, killed and started again -------------------------------------------------


GRID = TINY.format(steps=400, eval_every=100, every=20) + \
    "[grid]\n\"optimizer.lr\" = [0.03, 0.01, 0.003]\n"


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    """The 3-trial grid, swept in one go (2 at a time: placement changes no result)."""
    folder = tmp_path_factory.mktemp("whole")
    spec = folder / "grid.toml"
    spec.write_text(GRID)
    _finish(_sweep(spec, folder / "out", "--max-concurrent", "2"))
    return folder / "out"


def test_a_killed_sweep_started_again_reruns_nothing_finished_and_resumes_the_rest(tmp_path,
                                                                                  whole):
    """The driver (and everything it started) is killed while the second of three
    trials trains; the same command then finishes the sweep: the first trial's run is
    not touched, the second resumes from its own checkpoint, and the table and CSV
    are those of a sweep that ran in one go."""
    spec = tmp_path / "grid.toml"
    spec.write_text(GRID)
    killed = tmp_path / "killed"
    first, second = killed / "runs" / "lr0.03", killed / "runs" / "lr0.01"

    proc = _sweep(spec, killed, "--max-concurrent", "1", start_new_session=True)
    deadline = time.monotonic() + 180
    while not (_stopped(first) and (second / "checkpoints" / "step-20").is_dir()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the sweep did not get to its second trial"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not _stopped(second), "the second trial finished before the kill"
    first_events = (first / EVENTS_FILE).read_bytes()

    again = _finish(_sweep(spec, killed, "--max-concurrent", "1"))
    assert "trial lr0.01: val_accuracy" in again and "(resumed," in again
    assert "trial lr0.003: val_accuracy" in again and "(trained," in again
    # Ray kept the first trial's result, or (killed before it saved that) runs the trial
    # again, which finds its run finished and reuses it.
    first_line = [line for line in again.splitlines() if line.startswith("trial lr0.03:")]
    assert all("(reused," in line for line in first_line), first_line
    assert (first / EVENTS_FILE).read_bytes() == first_events          # not run again
    sessions = [e for e in read_events(second / EVENTS_FILE) if e.get("event") == "run_start"]
    assert [e["resumed"] for e in sessions] == [False, True]           # resumed, once
    assert sessions[1]["step"] >= 20

    assert (killed / "sweep.md").read_text() == (whole / "sweep.md").read_text()
    assert _csv_without((killed / "sweep.csv").read_text(), "seconds", "node_id") == \
        _csv_without((whole / "sweep.csv").read_text(), "seconds", "node_id")
    rows = list(csv.DictReader(io.StringIO((whole / "sweep.csv").read_text())))
    assert [r["rank"] for r in rows] == ["1", "2", "3"]
    accuracies = [float(r["val_accuracy"]) for r in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    # Every trial is an ordinary run: the best configuration trains as it is.
    best = load_config(whole / "best.toml")
    assert best.optimizer.lr == float(rows[0]["optimizer.lr"]) and best.train.steps == 400


# -- a search ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_search_over_seeds_selects_by_validation_and_a_rerun_trains_nothing(tmp_path):
    spec = tmp_path / "search.toml"
    spec.write_text("[sweep]\nseeds = [0, 1]\n" + TINY.format(steps=40, eval_every=20, every=20)
                    + "[search]\ntrials = 3\nseed = 5\n"
                    "\"optimizer.lr\" = { low = 0.001, high = 0.1, log = true }\n"
                    "\"estimator.k\" = [2, 4]\n")
    out = tmp_path / "out"
    printed = _finish(_sweep(spec, out))
    rows = list(csv.DictReader(io.StringIO((out / "sweep.csv").read_text())))
    assert len(rows) == 3 and printed.count("(trained,trained,") == 3
    for row in rows:
        assert 0.001 <= float(row["optimizer.lr"]) <= 0.1 and row["estimator.k"] in ("2", "4")
        runs = sorted(p.name for p in (out / "runs").glob(f"{row['trial']}-s*"))
        assert runs == [f"{row['trial']}-s0", f"{row['trial']}-s1"]
        per_seed = []
        for run in runs:   # the row's metric is the mean of its runs' best validation
            evals = [e for e in read_events(out / "runs" / run / EVENTS_FILE)
                     if e.get("event") == "eval"]
            per_seed.append(max(e["val_accuracy"] for e in evals))
        assert float(row["val_accuracy"]) == pytest.approx(sum(per_seed) / 2)
    accuracies = [float(r["val_accuracy"]) for r in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    best = load_config(out / "best.toml")
    assert (best.estimator.k, best.optimizer.lr, best.seed) == \
        (int(rows[0]["estimator.k"]), float(rows[0]["optimizer.lr"]), 0)

    table = (out / "sweep.md").read_text()
    again = _finish(_sweep(spec, out))
    assert "trained" not in again and "resumed" not in again
    assert (out / "sweep.md").read_text() == table


def test_a_spec_changed_under_a_sweep_is_refused(tmp_path, whole):
    spec = tmp_path / "grid.toml"
    spec.write_text(GRID.replace("train.steps = 400", "train.steps = 800"))
    table = (whole / "sweep.md").read_text()
    proc = _sweep(spec, whole)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.startswith(f"pgt: sweep: {whole} holds a sweep of another spec") and \
        err.count("\n") == 1
    assert (whole / "sweep.md").read_text() == table       # nothing of it lost


# -- pgt report on the same engine ------------------------------------------------------


@pytest.mark.slow
def test_the_report_runs_on_ray_and_measures_what_it_measures_in_one_process(tmp_path):
    from pgt._report import run_report

    code = ("import sys; from pathlib import Path; from pgt._report import run_report; "
            f"run_report(Path({str(tmp_path / 'ray')!r}), quick=True, seeds=(0,), jobs=2, "
            "sections=('dense',))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # one BLAS thread, as `pgt report` pins it and as Ray gives each worker: a ridge
    # fit's sums would otherwise be split over threads, changing a loss's last bit
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        run_report(tmp_path / "here", quick=True, seeds=(0,), jobs=1, sections=("dense",))
    on_ray = (tmp_path / "ray" / "report.md").read_text()
    assert "(Ray Tune, 2 at a time)" in on_ray
    import json

    def measured(folder: str) -> list:
        rows = json.loads((tmp_path / folder / "results.json").read_text())["rows"]
        return [(r["label"], r["accuracy"], r["test_loss"], r["ring_evals"]) for r in rows]

    assert measured("ray") == measured("here") and len(measured("ray")) == 7
