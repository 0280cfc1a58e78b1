"""Run logs: JSON lines on disk, structlog events in memory, rendering and following."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np
import structlog
import trio
from structlog.testing import capture_logs

from pgt._config import load_config
from pgt._logging import (configure_logging, follow_events, get_logger, read_events,
                            render_event)
from pgt._runloop import run_training


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_events_are_flushed_json_lines_with_run_id(tmp_path) -> None:
    close = configure_logging(tmp_path, run_id="r1")
    try:
        get_logger().info("step", step=np.int64(3), loss=np.float64(0.5), path=tmp_path)
        lines = _lines(tmp_path / "events.jsonl")  # readable before the file is closed
    finally:
        close()
    (event,) = lines
    assert event["event"] == "step" and event["run_id"] == "r1"
    assert event["step"] == 3 and event["loss"] == 0.5 and event["path"] == str(tmp_path)
    stamp = datetime.datetime.fromisoformat(event["timestamp"])
    assert stamp.utcoffset() == datetime.timedelta(0)
    assert structlog.contextvars.get_contextvars() == {}


def test_a_resumed_run_appends(tmp_path) -> None:
    for name in ("first", "second"):
        close = configure_logging(tmp_path)
        get_logger().info(name)
        close()
    events = _lines(tmp_path / "events.jsonl")
    assert [e["event"] for e in events] == ["first", "second"]
    assert {e["run_id"] for e in events} == {tmp_path.name}


async def test_a_run_emits_its_events(tmp_path, fakes) -> None:
    cfg = load_config(None, ["train.steps=6", "train.eval_every=3", "train.checkpoint_every=4",
                             "reservoir.url='fake://'"])
    with capture_logs() as logs:
        result = await run_training(cfg, tmp_path / "run", resume=False, **fakes)
    names = [e["event"] for e in logs]
    assert names == ["run_start", "step", "step", "step", "eval", "step", "checkpoint_saved",
                     "step", "step", "eval", "checkpoint_saved", "run_stop"]
    start, stop = logs[0], logs[-1]
    assert start["resumed"] is False and start["step"] == 0 and start["estimator"] == "interface"
    assert stop == {"event": "run_stop", "log_level": "info", "reason": "finished", "step": 6}
    assert logs[4]["step"] == 3 and "test_accuracy" in logs[4]
    assert logs[6]["path"] == tmp_path / "run" / "checkpoints" / "step-4"
    assert result["reason"] == "finished" and result["step"] == 6


async def test_the_file_holds_the_same_events(tmp_path, fakes) -> None:
    cfg = load_config(None, ["train.steps=2", "reservoir.url='fake://'"])
    await run_training(cfg, tmp_path / "run", resume=False, **fakes)
    events = list(read_events(tmp_path / "run" / "events.jsonl"))
    assert [e["event"] for e in events] == ["run_start", "step", "step", "eval",
                                            "checkpoint_saved", "run_stop"]
    assert events[1]["loss"] > 0 and events[1]["ring_evals"] == 2


def test_render_event() -> None:
    event = {"timestamp": "2026-01-02T03:04:05.123456Z", "event": "eval", "run_id": "r",
             "level": "info", "step": 100, "test_accuracy": 0.976123, "note": "a b"}
    text = render_event(event)
    clock = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC).astimezone()
    assert text == f'{clock:%H:%M:%S}  eval             step=100 test_accuracy=0.9761 note="a b"'


def test_a_torn_last_line_is_skipped(tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"event": "step", "step": 1}\n{"event": "st')
    assert [e["step"] for e in read_events(path)] == [1]


async def test_follow_until_run_stop(tmp_path, autojump_clock) -> None:
    path = tmp_path / "events.jsonl"
    seen: list[str] = []

    async def write() -> None:
        await trio.sleep(1)  # the file does not exist yet when following starts
        with path.open("a") as f:
            for i in range(3):
                f.write(json.dumps({"event": "step", "step": i}) + "\n")
                f.flush()
                await trio.sleep(1)
            f.write('{"event": "run_st')  # half a line: held back until complete
            f.flush()
            await trio.sleep(1)
            f.write('op", "reason": "finished"}\n')
            f.flush()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        with trio.fail_after(60):
            await follow_events(path, lambda e: seen.append(e["event"]))
    assert seen == ["step", "step", "step", "run_stop"]


def test_appending_after_a_torn_line_keeps_new_events_whole(tmp_path) -> None:
    (tmp_path / "events.jsonl").write_text('{"event": "step", "step": 1}\n{"event": "st')
    close = configure_logging(tmp_path)
    get_logger().info("run_resumed", step=1)
    close()
    assert [e["event"] for e in read_events(tmp_path / "events.jsonl")] == ["step",
                                                                           "run_resumed"]


async def test_follow_a_resumed_run_past_its_earlier_stop(tmp_path, autojump_clock) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"event": "run_stop", "reason": "signal"}\n{"event": "run_resumed"}\n')
    seen: list[str] = []

    async def write() -> None:
        await trio.sleep(5)
        with path.open("a") as f:
            f.write('{"event": "step"}\n{"event": "run_stop", "reason": "finished"}\n')

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        with trio.fail_after(60):
            await follow_events(path, lambda e: seen.append(e["event"]))
    assert seen == ["run_stop", "run_resumed", "step", "run_stop"]
