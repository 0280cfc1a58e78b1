"""Checkpoints: atomic, checksummed, reproducible, pruned."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pgt._checkpoint import (CheckpointError, latest_checkpoint, load_checkpoint,
                               save_checkpoint)


def _state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"params": rng.normal(size=50), "adam_m": rng.normal(size=(5, 10)),
            "step": np.array(7, dtype=np.int64), "flag": np.array([True, False])}


def test_round_trip(tmp_path) -> None:
    path = save_checkpoint(tmp_path, 7, _state(), {"run_id": "r", "ring_evals": 12})
    assert path == tmp_path / "checkpoints" / "step-7"
    assert latest_checkpoint(tmp_path) == path
    arrays, meta = load_checkpoint(path)
    assert set(arrays) == set(_state())
    for name, value in _state().items():
        assert arrays[name].dtype == value.dtype
        assert np.array_equal(arrays[name], value)
    assert meta["step"] == 7 and meta["run_id"] == "r" and meta["format_version"] == 1
    assert len(meta["sha256"]) == 64


def test_equal_state_gives_equal_bytes(tmp_path) -> None:
    a = save_checkpoint(tmp_path / "a", 1, _state(), {})
    b = save_checkpoint(tmp_path / "b", 1, _state(), {})
    assert (a / "arrays.npz").read_bytes() == (b / "arrays.npz").read_bytes()


def test_object_arrays_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path, 1, {"x": np.array([{}], dtype=object)}, {})
    assert latest_checkpoint(tmp_path) is None
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_reserved_meta_keys_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path, 1, _state(), {"sha256": "x"})


def test_flipped_byte_is_detected(tmp_path) -> None:
    path = save_checkpoint(tmp_path, 3, _state(), {})
    npz = path / "arrays.npz"
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0x01
    npz.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["arrays.npz", "meta.json"])
def test_truncated_files_are_detected(tmp_path, name) -> None:
    path = save_checkpoint(tmp_path, 3, _state(), {})
    target = path / name
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"checkpoint {path}: "):
        load_checkpoint(path)


@pytest.mark.parametrize(("name", "message"), [("meta.json", "missing meta.json"),
                                               ("arrays.npz", "missing arrays.npz")])
def test_missing_files_are_detected(tmp_path, name, message) -> None:
    path = save_checkpoint(tmp_path, 3, _state(), {})
    (path / name).unlink()
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_unsupported_format_version(tmp_path) -> None:
    path = save_checkpoint(tmp_path, 3, _state(), {})
    meta = json.loads((path / "meta.json").read_text())
    meta["format_version"] = 9
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unsupported format version 9"):
        load_checkpoint(path)


def test_keeps_the_newest(tmp_path) -> None:
    for step in (1, 2, 10, 11, 12):
        save_checkpoint(tmp_path, step, _state(step), {}, keep=3)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-10", "step-11", "step-12"]
    assert latest_checkpoint(tmp_path).name == "step-12"


def test_same_step_is_replaced(tmp_path) -> None:
    save_checkpoint(tmp_path, 4, _state(0), {})
    path = save_checkpoint(tmp_path, 4, _state(1), {})
    assert np.array_equal(load_checkpoint(path)[0]["params"], _state(1)["params"])
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-4"]


def test_crash_leftover_is_ignored_then_cleaned(tmp_path) -> None:
    save_checkpoint(tmp_path, 5, _state(), {})
    leftover = tmp_path / "checkpoints" / ".tmp-step-6-abc"
    leftover.mkdir()
    (leftover / "arrays.npz").write_bytes(b"half")
    assert latest_checkpoint(tmp_path).name == "step-5"
    save_checkpoint(tmp_path, 7, _state(), {})
    assert not leftover.exists()
    assert latest_checkpoint(tmp_path).name == "step-7"


def test_no_checkpoint(tmp_path) -> None:
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(CheckpointError, match="no such directory"):
        load_checkpoint(tmp_path / "checkpoints" / "step-1")
