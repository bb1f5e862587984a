"""How ``topiary status`` prints a job: what each accuracy row measured."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console

from cli.view import job_summary, trials_table


def printed(job: dict[str, Any]) -> str:
    console = Console(record=True, width=120, color_system=None)
    console.print(job_summary(job))
    return console.export_text()


def job(status: str, best: dict[str, Any] | None) -> dict[str, Any]:
    return {"id": "j1", "name": "n", "status": status, "phase": None, "progress": {},
            "error": None, "artifacts": [],
            "baseline": {"accuracy": 0.95, "latency_ms": 4.0, "memory_mb": 1.0,
                         "flops": 1000, "params": 100},
            "best": best}


def test_a_finished_job_shows_the_held_out_test_accuracy_beside_the_validation_one() -> None:
    best = {"accuracy": 0.93, "test_accuracy": 0.90, "baseline_test_accuracy": 0.94,
            "latency_ms": 2.0, "memory_mb": 0.5, "flops": 400, "params": 40}
    text = printed(job("succeeded", best))
    assert re.search(r"accuracy \(val\)\s.*95\.0 %.*93\.0 %.*-2\.0 pts", text), text
    # the unpruned network's test accuracy is the worker's, from the best's record
    assert re.search(r"accuracy \(test\)\s.*94\.0 %.*90\.0 %.*-4\.0 pts", text), text


def test_a_row_measured_on_neither_side_is_left_out() -> None:
    best = {"accuracy": 0.93, "latency_ms": 2.0, "memory_mb": 0.5, "flops": 400, "params": 40}
    text = printed(job("searching", best))
    assert "accuracy (val)" in text and "latency" in text
    assert "accuracy (test)" not in text, text


def test_the_channels_column_counts_groups_left_whole_and_none_in_dropped_blocks() -> None:
    groups = [{"name": "conv1", "channels": 16, "block": None},
              {"name": "layer1.0.conv1", "channels": 16, "block": "layer1.0"},
              {"name": "layer2.0.conv1", "channels": 32, "block": "layer2.0"}]
    trials = [{"number": 0, "state": "COMPLETE", "accuracy": 0.9,
               "plan": {"keep": {"layer2.0.conv1": 8}, "drop_blocks": []}},
              {"number": 1, "state": "COMPLETE", "accuracy": 0.8,  # blocks dropped, no width cut
               "plan": {"keep": {}, "drop_blocks": ["layer1.0"]}},
              {"number": 2, "state": "WAITING", "plan": None}]
    console = Console(record=True, width=160, color_system=None)
    console.print(trials_table(trials, groups))
    rows = {line.split()[0]: line for line in console.export_text().splitlines()
            if line.strip()[:1].isdigit()}
    assert "40 (62%)" in rows["0"] and "48 (75%)" in rows["1"], rows
    assert rows["2"].split()[-2:] == ["-", "-"]
    assert "waiting" in rows["2"]
    console = Console(record=True, width=160, color_system=None)
    console.print(trials_table(trials, groups, ended=True))  # the search is over
    assert "not run" in console.export_text() and "waiting" not in console.export_text()
