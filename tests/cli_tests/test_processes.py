"""Child processes as the demo and the test harness start them (``cli.processes``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cli.processes import ChildExited, ChildProcesses, free_port, start_child

SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]


def test_children_log_to_their_file_and_stop_newest_first(tmp_path: Path) -> None:
    children = ChildProcesses({}, tmp_path / "logs", log_prefix="demo-")
    first = children.start("api", SLEEPER)
    second = children.start("worker", SLEEPER)
    first.wait_until(lambda: first.log_tail(1) == "up", 30, "start")
    assert children.exited() is None and first.alive() and second.alive()
    assert first.log_path == tmp_path / "logs" / "demo-api.log"
    assert first.log_tail(2).splitlines()[0].startswith("--- ")  # the command, then its output
    children.stop_all(timeout=10)
    assert not first.alive() and not second.alive() and children.started == []
    assert first.returncode == second.returncode == -15  # SIGTERM, not a kill


def test_a_child_that_exits_while_awaited_is_reported_with_its_log(tmp_path: Path) -> None:
    child = start_child("api", [sys.executable, "-c", "print('no database'); raise SystemExit(3)"],
                        environment={}, log_path=tmp_path / "api.log")
    with pytest.raises(ChildExited, match="(?s)status 3.*no database"):
        child.wait_until(lambda: False, 30, "answer")


def test_a_child_that_never_gets_ready_times_out_and_can_be_killed(tmp_path: Path) -> None:
    child = start_child("api", SLEEPER, environment={}, log_path=tmp_path / "api.log")
    with pytest.raises(TimeoutError, match="did not answer within"):
        child.wait_until(lambda: False, 0.5, "answer")
    child.kill()
    assert child.returncode == -9


def test_free_port_can_be_bound() -> None:
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", free_port()))
