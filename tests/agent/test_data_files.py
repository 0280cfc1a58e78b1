"""A lab's own data through the CLI: .csv and .npz files, their labels, splits and
standardisation, and bad input as one-line errors that leave nothing behind."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pgt._data import DataError, dataset_from_arrays, open_dataset
from pgt._schema import DataConfig
from pgt.cli import main

SHORT = ["--set", "train.steps=4", "--set", "train.eval_every=2", "--quiet",
         "--backend", "sim://ring?nodes=4"]


def _blobs(n=90, d=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(size=(n, d)) + 3.0 * y[:, None]
    return x, y


def _write_csv(path, x, labels, label="label"):
    header = [f"f{j}" for j in range(x.shape[1])] + [label]
    lines = [",".join(header)] + [",".join([*(f"{v:.6g}" for v in row), str(lab)])
                                  for row, lab in zip(x, labels)]
    path.write_text("\n".join(lines) + "\n")


def _train(tmp_path, data, *extra):
    return main(["train", "--data", str(data), "--run-dir", str(tmp_path / "runs"),
                 "--name", "r", *SHORT, *extra])


def test_a_csv_with_text_labels_trains_and_eval_names_the_classes(tmp_path, capsys):
    x, y = _blobs()
    names = np.array(["alpha", "beta", "gamma"])[y]
    _write_csv(tmp_path / "d.csv", x, names)
    assert _train(tmp_path, tmp_path / "d.csv") == 0, capsys.readouterr().err
    run = tmp_path / "runs" / "r"
    info = json.loads((run / "data.json").read_text())
    assert info["class_names"] == ["alpha", "beta", "gamma"]
    assert info["format"] == "csv" and info["shape"] == [90, 5]
    assert info["columns"] == [f"f{j}" for j in range(5)]
    assert len(info["sha256"]) == 64
    assert 'path = "' + str((tmp_path / "d.csv").resolve()) + '"' in (run / "config.toml").read_text()
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "class alpha:" in out and "class gamma:" in out and "best validation" in out


def test_statistics_come_from_the_training_part_only(tmp_path):
    x, y = _blobs(n=120)
    cfg = DataConfig(test_fraction=0.25, val_fraction=0.2)
    data = dataset_from_arrays(x, y, cfg=cfg)
    info = data.info
    assert (info["n_train"], info["n_val"], info["n_test"]) == (72, 18, 30)
    # Undo the standardisation: the mean and std are the raw training rows' own.
    raw_train = data.x_train * np.array(info["feature_std"]) + np.array(info["feature_mean"])
    np.testing.assert_allclose(raw_train.mean(axis=0), info["feature_mean"], atol=1e-12)
    np.testing.assert_allclose(raw_train.std(axis=0), info["feature_std"], atol=1e-12)
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0, atol=1e-12)
    assert abs(data.x_test.mean()) > 1e-6   # the test part is not re-centred on itself


def test_an_npz_keeps_its_own_test_split_and_reads_sequences_as_tokens(tmp_path):
    rng = np.random.default_rng(1)
    x, x_test = rng.normal(size=(60, 4, 2)), rng.normal(size=(20, 4, 2))
    y, y_test = np.arange(60) % 2, np.arange(20) % 2
    np.savez(tmp_path / "s.npz", x=x, y=y, x_test=x_test, y_test=y_test)
    data = open_dataset(DataConfig(path=str(tmp_path / "s.npz"), val_fraction=0.25))
    assert data.tokens == 4 and data.n_features == 8
    assert len(data.y_test) == 20 and len(data.y_train) + len(data.y_val) == 60
    assert data.info["test_from"] == "file"
    # Per channel over samples and tokens of the training part.
    assert len(data.info["feature_mean"]) == 2


def test_regression_from_a_csv_fits_and_reports_nmse(tmp_path, capsys):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(80, 3))
    target = 100.0 + 20.0 * np.tanh(x[:, 0]) + 5.0 * x[:, 1]
    _write_csv(tmp_path / "r.csv", x, target, label="yield")
    code = _train(tmp_path, tmp_path / "r.csv", "--set", "data.task=regression",
                  "--set", "data.label=yield")
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.startswith("test NMSE ") and "R²" in out
    info = json.loads((tmp_path / "runs" / "r" / "data.json").read_text())
    assert info["task"] == "regression" and 90 < info["target_mean"][0] < 110
    assert main(["plot", str(tmp_path / "runs" / "r")]) == 0      # NMSE curves
    assert (tmp_path / "runs" / "r" / "curves.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "runs" / "r")]) == 0
    assert capsys.readouterr().out.startswith("test NMSE ")


def test_fractional_labels_ask_for_regression(tmp_path):
    x, _ = _blobs(n=30)
    with pytest.raises(DataError, match='data.task = "regression"'):
        dataset_from_arrays(x, np.linspace(0, 1, 30))


def _csv(tmp_path, text, name="bad.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _blob_csv(tmp_path, mutate):
    x, y = _blobs(n=30, d=2)
    _write_csv(tmp_path / "bad.csv", x, y)
    lines = (tmp_path / "bad.csv").read_text().splitlines()
    (tmp_path / "bad.csv").write_text("\n".join(mutate(lines)) + "\n")
    return tmp_path / "bad.csv"


def _npz(tmp_path, **arrays):
    np.savez(tmp_path / "bad.npz", **arrays)
    return tmp_path / "bad.npz"


BAD = {
    "non-numeric cell": (lambda t: _blob_csv(t, lambda ls: ls[:5] + ["1.0,abc,0"] + ls[6:]),
                         (), r"line 6, column 'f1': 'abc' is not a number"),
    "missing label column": (lambda t: _csv(t, "a,b\n1,2\n3,4\n"), (),
                             r"no label column 'label' \(columns: a, b\)"),
    "NaN in a csv": (lambda t: _blob_csv(t, lambda ls: ls[:3] + ["nan,1,0"] + ls[4:]), (),
                     r"line 4, column 'f0': 'nan' is not a finite number"),
    "infinity in an npz": (lambda t: _npz(t, x=np.array([[1.0, np.inf]] * 6), y=np.arange(6) % 2),
                           (), r"array 'x' has NaN or infinity at index \(0, 1\)"),
    "empty csv": (lambda t: _csv(t, ""), (), r"the file is empty"),
    "header only": (lambda t: _csv(t, "a,label\n"), (), r"a header but no data rows"),
    "class too small": (lambda t: _blob_csv(t, lambda ls: ls + ["5,5,lonely"]), (),
                        r"class 'lonely' has 1 sample\(s\); the train/validation/test split "
                        r"needs at least 3"),
    "text labels for regression": (lambda t: _blob_csv(t, lambda ls: ls[:2] + ["1,2,setosa"] + ls[3:]),
                                   ("--set", "data.task=regression"),
                                   r"line 3, column 'label': label 'setosa' is not a number"),
    "x/y length mismatch": (lambda t: _npz(t, x=np.zeros((10, 2)), y=np.zeros(9, int)), (),
                            r"'x' has 10 samples but 'y' has 9"),
    "1-D x": (lambda t: _npz(t, x=np.zeros(10), y=np.zeros(10, int)), (),
              r"array 'x' has shape \(10,\); it must be \(samples, features\)"),
    "unknown suffix": (lambda t: _csv(t, "x", name="bad.txt"), (), r"unknown format '.txt'"),
    "missing file": (lambda t: t / "nowhere.csv", (), r"no such file"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_data_is_one_line_naming_the_file_and_nothing_is_written(case, tmp_path, capsys):
    make, extra, message = BAD[case]
    path = make(tmp_path)
    before = path.read_bytes() if path.exists() else None
    code = _train(tmp_path, path, *extra)
    err = capsys.readouterr().err
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pgt: ") and str(path.name) in lines[0], err
    assert __import__("re").search(message, lines[0]), lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()
    assert (path.read_bytes() if path.exists() else None) == before


def test_a_data_file_changed_before_resume_is_refused_and_the_run_kept(tmp_path, capsys):
    x, y = _blobs()
    _write_csv(tmp_path / "d.csv", x, y)
    assert _train(tmp_path, tmp_path / "d.csv", "--set", "train.checkpoint_every=2") == 0
    run = tmp_path / "runs" / "r"
    (run / "checkpoints" / "step-4").rename(run / "checkpoints" / "later")   # resumable
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    _write_csv(tmp_path / "d.csv", x + 1e-3, y)
    capsys.readouterr()
    assert main(["resume", str(run), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("pgt: data file ") and "changed since the run started" in err
    assert "\n" not in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert main(["eval", str(run)]) == 1
