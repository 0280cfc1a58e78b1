"""tools/chaos.py drives a run through kills of the trainer and the device, a corrupt
checkpoint and a concurrent resume, and every one of its checks holds."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import chaos  # noqa: E402


@pytest.mark.slow
def test_a_short_chaos_run_holds_every_check(tmp_path, capsys):
    assert chaos.main(["--kills", "6", "--steps", "200", "--seed", "3",
                       "--out", str(tmp_path)]) == 0, capsys.readouterr().out
    assert "| NO |" not in capsys.readouterr().out
