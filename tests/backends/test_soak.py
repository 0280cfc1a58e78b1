"""The fault soak (tools/fault_soak.py) as a test: slow, so opt-in (pytest -m slow).

Training through the emulator with 1 % of the link's bytes corrupted, a watchdog
reset every 500 FORWARDs and one unplug/replug finishes; each trial id has exactly
one accepted result in the event log; the final accuracy is within one point of the
clean run's; every injected fault shows up in the log.
"""

import importlib.util
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "fault_soak.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("fault_soak", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
async def test_training_survives_corruption_resets_and_an_unplug(autojump_clock, tmp_path):
    summary = await load_tool().soak(tmp_path, steps=30, corrupt=0.01, reset_every=500,
                                     unplug_at=1200)
    assert summary["finished"]
    assert summary["each_trial_once"] and summary["trials"] == summary["ring_evals"] > 2500
    assert summary["accuracy_within_1_point"]
    assert summary["injected"]["resets"] >= 5 and summary["injected"]["unplugged"] == 1
    assert summary["every_fault_logged"]
