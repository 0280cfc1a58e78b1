"""Checkpoints: one versioned, checksummed record of everything needed to resume.

Layout: ``<run_dir>/checkpoints/step-<N>/`` holds ``arrays.npz`` (NumPy arrays, never
pickled) and ``meta.json`` (format version, step, creation time, the SHA-256 of
``arrays.npz`` and the caller's fields). A checkpoint is written into a temporary
directory beside the others, fsynced and renamed into place, so a crash leaves either
the old set or the new one, never half a checkpoint. The ``arrays.npz`` bytes depend
only on the arrays (fixed zip timestamps, sorted names): equal state, equal bytes.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BEST", "CheckpointError", "FORMAT_VERSION", "best_checkpoint", "latest_checkpoint",
           "list_checkpoints",
           "load_checkpoint", "save_checkpoint"]

FORMAT_VERSION = 1
BEST = "best"   # the checkpoint of the best validation metric so far
_STEP_DIR = re.compile(r"step-(\d+)")
_TMP_PREFIX = ".tmp-"
_RESERVED = ("format_version", "step", "created", "sha256", "arrays")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable or fails its checks (one-line message)."""


def save_checkpoint(run_dir: str | Path, step: int, arrays: Mapping[str, np.ndarray],
                    meta: Mapping[str, Any], *, keep: int = 3, name: str | None = None) -> Path:
    """Write ``step-<step>`` atomically, keep the newest ``keep``; return its path.

    ``name`` (such as ``BEST``) writes that checkpoint instead, outside the numbered
    ones: it is never pruned and never the latest. ``meta`` must be JSON-serialisable
    and must not use the reserved keys. An existing checkpoint of the same step (or
    name) is replaced. Raises ``OSError`` when the disk refuses, ``ValueError`` for
    object arrays or reserved meta keys.
    """
    if clash := set(meta) & set(_RESERVED):
        raise ValueError(f"meta keys {sorted(clash)} are reserved")
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}step-{step}-", dir=root))
    try:
        data = _npz_bytes(arrays)
        _write_synced(tmp / "arrays.npz", data)
        record = {"format_version": FORMAT_VERSION, "step": int(step),
                  "created": datetime.datetime.now(datetime.UTC).isoformat(),
                  "sha256": hashlib.sha256(data).hexdigest(),
                  "arrays": sorted(arrays), **meta}
        _write_synced(tmp / "meta.json", json.dumps(record, indent=2).encode() + b"\n")
        _fsync_dir(tmp)
        final = root / (name or f"step-{step}")
        _move_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(root)
    if name is None:
        _prune(root, keep)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint directory of a run, or None if there is none."""
    steps = _checkpoints(Path(run_dir) / "checkpoints")
    return steps[-1] if steps else None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """A run's numbered checkpoint directories, oldest first (none verified)."""
    return _checkpoints(Path(run_dir) / "checkpoints")


def best_checkpoint(run_dir: str | Path) -> Path | None:
    """The run's best-validation checkpoint directory, or None if it has none."""
    path = Path(run_dir) / "checkpoints" / BEST
    return path if path.is_dir() else None


def load_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read and verify a checkpoint: (arrays, meta). Raises ``CheckpointError``."""
    path = Path(path)
    meta = _read_meta(path)
    try:
        data = (path / "arrays.npz").read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: missing arrays.npz") from None
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {path}: checksum mismatch in arrays.npz")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"checkpoint {path}: unreadable arrays.npz ({e})") from None
    return arrays, meta


def _read_meta(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path}: no such directory")
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: missing meta.json") from None
    except (ValueError, OSError) as e:
        raise CheckpointError(f"checkpoint {path}: unreadable meta.json ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: meta.json is not an object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: unsupported format version "
                              f"{meta.get('format_version')}")
    return meta


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An .npz archive (what np.savez writes) with reproducible bytes, no pickle."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(arrays[name]),
                                          allow_pickle=False)
    return buffer.getvalue()


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    # A rename is durable only once the directory holding it is synced.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_into_place(tmp: Path, final: Path) -> None:
    if not final.exists():
        tmp.rename(final)
        return
    # Replacing a checkpoint of the same step (rename cannot overwrite a directory):
    # move the old one aside; a crash in this window loses only this step's record,
    # the older checkpoints stay.
    old = final.with_name(f"{_TMP_PREFIX}old-{final.name}")
    shutil.rmtree(old, ignore_errors=True)
    final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if p.is_dir() and (m := _STEP_DIR.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def _prune(root: Path, keep: int) -> None:
    for old in _checkpoints(root)[:-max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(root: Path) -> None:
    """Delete temporary directories a crashed save left behind."""
    for path in root.glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)
