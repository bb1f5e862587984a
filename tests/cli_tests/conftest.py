"""A real latency agent process on loopback, and small networks for it to time."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from torch import nn

from core.latency_agent import HEALTH_PATH, SECRET_VARIABLE, AgentAddress
from tests.support import REPOSITORY, ChildExited, ChildProcess, free_port, start_child

SECRET = "a-secret-for-tests-only-0123456789"
#: One sample: 3 x 16 x 16.
SHAPE = (3, 16, 16)
#: The agents under test refuse models over this (``--max-model-mib``).
MAX_MODEL_MIB = 1


@dataclass
class RunningAgent:
    port: int
    process: ChildProcess
    name: str = "edge"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> AgentAddress:
        return AgentAddress(name=self.name, url=self.url, secret=SECRET)

    def stop(self) -> None:
        self.process.kill()


def start_agent(port: int | None = None, *options: str) -> RunningAgent:
    """``python -m cli.latency_agent`` on loopback, answering /healthz (or a failed test)."""
    port = port or free_port()
    log_path = Path(tempfile.mkdtemp(prefix="topiary-agent-")) / "agent.log"
    process = start_child(
        "latency agent",
        [sys.executable, "-m", "cli.latency_agent", "--port", str(port),
         "--max-model-mib", str(MAX_MODEL_MIB), "--threads", "1", *options],
        environment={**os.environ, SECRET_VARIABLE: SECRET}, log_path=log_path, cwd=REPOSITORY)
    agent = RunningAgent(port=port, process=process)

    def healthy() -> bool:
        try:
            return httpx.get(f"{agent.url}{HEALTH_PATH}", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        process.wait_until(healthy, 60, "answer /healthz")
    except (ChildExited, TimeoutError) as error:
        agent.stop()
        pytest.fail(f"the latency agent did not start: {error}")
    return agent


@pytest.fixture(scope="module")
def agent() -> Iterator[RunningAgent]:
    running = start_agent()
    try:
        yield running
    finally:
        running.stop()


def network(width: int) -> nn.Module:
    """A small CNN; ``width`` channels in both convolutions."""
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)).eval()


@dataclass(frozen=True)
class Networks:
    wide: nn.Module
    narrow: nn.Module
    wide_onnx: bytes
    narrow_onnx: bytes


@pytest.fixture(scope="session")
def networks() -> Networks:
    """An unpruned network and a pruned one (64 and 8 channels), and their ONNX files."""
    from models.agent_client import onnx_bytes

    wide, narrow = network(64), network(8)
    return Networks(wide, narrow, onnx_bytes(wide, SHAPE), onnx_bytes(narrow, SHAPE))
