"""A real ``topiary latency-agent`` process on loopback, timing real networks for a worker."""

from __future__ import annotations

import hashlib
import socket
import threading
import time

import httpx
import pytest

from cli.latency_agent import SettingsError, settings_from
from cli.latency_agent._app import DeviceGate, Refusal
from core.errors import LatencyAgentError, LatencyAgentUnavailableError
from core.latency_agent import (
    AGENTS_VARIABLE,
    COMPARE_PATH,
    MODELS_PATH,
    SECRET_VARIABLE,
    AgentAddress,
    CompareResult,
)
from models.agent_client import AgentClient, RetryPolicy
from models.runtimes import available_runtimes, compare_in_runtime
from tests.cli_tests.conftest import (
    MAX_MODEL_MIB,
    SECRET,
    SHAPE,
    Networks,
    RunningAgent,
    start_agent,
)

AGENT_RUNTIMES = [runtime for runtime in ("onnxruntime", "openvino")
                  if runtime in available_runtimes()]


class CountingClient(AgentClient):
    """Records every request it sends."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.sent: list[str] = []
        self.pauses: list[float] = []
        self.sleep = lambda seconds: (self.pauses.append(seconds), time.sleep(seconds))

    def _send(self, http: httpx.Client, method: str, path: str, body: bytes,
              content_type: str) -> httpx.Response:
        self.sent.append(f"{method} {path.split('/')[2]}")
        return super()._send(http, method, path, body, content_type)


def _raw_request(agent: RunningAgent, head: str) -> str:
    """Send only a request's head (no body) and return the status line of the answer."""
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as connection:
        connection.sendall(head.encode())
        return connection.recv(4096).decode(errors="replace").splitlines()[0]


@pytest.mark.parametrize("runtime", AGENT_RUNTIMES)
def test_the_agent_times_two_networks_side_by_side(agent: RunningAgent, networks: Networks,
                                                   runtime: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker knows the agent by name, from its own environment, as a job names it.
    monkeypatch.setenv(AGENTS_VARIABLE, f"other=http://127.0.0.1:9,edge={agent.url}")
    monkeypatch.setenv(SECRET_VARIABLE, SECRET)
    reference, candidate = compare_in_runtime(networks.wide, networks.narrow, SHAPE, runtime,
                                              warmup=3, runs=25, threads=1, target="edge")
    for timing in (reference, candidate):
        assert timing.runs == 25 and timing.threads == 1 and timing.device_type == "cpu"
        assert 0 < timing.median_ms <= timing.p90_ms
        assert timing.device_name.endswith("(latency agent edge)")
    assert candidate.median_ms < reference.median_ms  # 8 channels against 64


def test_a_model_the_agent_holds_is_not_sent_again(agent: RunningAgent,
                                                   networks: Networks) -> None:
    client = CountingClient(agent.address)
    first = client.compare(networks.wide_onnx, networks.narrow_onnx, "onnxruntime", SHAPE,
                           warmup=1, runs=5)
    assert isinstance(first, CompareResult) and len(first.reference.times_ms) == 5
    client.sent.clear()
    client.compare(networks.wide_onnx, networks.narrow_onnx, "onnxruntime", SHAPE, runs=5)
    assert client.sent == ["POST compare"]


@pytest.mark.parametrize("authorization", ["Bearer not-the-secret-at-all-0000", None])
def test_a_wrong_secret_is_refused_before_the_body_is_read(agent: RunningAgent,
                                                           authorization: str | None) -> None:
    header = f"Authorization: {authorization}\r\n" if authorization else ""
    digest = "0" * 64
    # A gigabyte is announced and never sent: the answer cannot have waited for it.
    status = _raw_request(agent, f"PUT {MODELS_PATH}/{digest} HTTP/1.1\r\nHost: agent\r\n"
                                 f"{header}Content-Length: 1000000000\r\n\r\n")
    assert status.startswith("HTTP/1.1 401"), status
    response = httpx.post(f"{agent.url}{COMPARE_PATH}", json={}, timeout=10,
                          headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    with pytest.raises(LatencyAgentError, match="HTTP 401"):
        AgentClient(AgentAddress("edge", agent.url, "wrong-secret-0123456789")).compare(
            b"x", b"y", "onnxruntime", SHAPE)


def test_an_oversized_model_is_refused(agent: RunningAgent, networks: Networks) -> None:
    too_large = (MAX_MODEL_MIB << 20) + 1
    status = _raw_request(agent, f"PUT {MODELS_PATH}/{'0' * 64} HTTP/1.1\r\nHost: agent\r\n"
                                 f"Authorization: Bearer {SECRET}\r\n"
                                 f"Content-Length: {too_large}\r\n\r\n")
    assert status.startswith("HTTP/1.1 413"), status

    def chunks() -> object:  # no Content-Length: counted as it streams
        for _ in range(too_large // 65536 + 1):
            yield b"\0" * 65536

    streamed = httpx.put(f"{agent.url}{MODELS_PATH}/{'0' * 64}", content=chunks(), timeout=30,
                         headers={"Authorization": f"Bearer {SECRET}"})
    assert streamed.status_code == 413
    assert "larger than this agent accepts" in streamed.json()["detail"]
    with pytest.raises(LatencyAgentError, match="413.*larger than this agent accepts"):
        AgentClient(agent.address).compare(networks.wide_onnx, b"\1" * too_large,
                                           "onnxruntime", SHAPE)


def test_a_malformed_model_is_refused_with_the_reason(agent: RunningAgent,
                                                      networks: Networks) -> None:
    garbage = b"this is not an ONNX model" * 10
    response = httpx.put(f"{agent.url}{MODELS_PATH}/{hashlib.sha256(garbage).hexdigest()}",
                         content=garbage, timeout=30,
                         headers={"Authorization": f"Bearer {SECRET}"})
    assert response.status_code == 422
    assert response.json()["error"] == "model_refused"
    with pytest.raises(LatencyAgentError, match="422, model_refused.*not a valid ONNX model"):
        AgentClient(agent.address).compare(networks.wide_onnx, garbage, "onnxruntime", SHAPE)
    mismatch = httpx.put(f"{agent.url}{MODELS_PATH}/{'0' * 64}", content=garbage, timeout=30,
                         headers={"Authorization": f"Bearer {SECRET}"})
    assert mismatch.status_code == 400 and mismatch.json()["error"] == "digest_mismatch"


def test_a_timing_the_models_cannot_run_is_refused_with_the_reason(
        agent: RunningAgent, networks: Networks) -> None:
    with pytest.raises(LatencyAgentError, match=r"takes input \['\?', 3, 16, 16\]"):
        AgentClient(agent.address).compare(networks.wide_onnx, networks.narrow_onnx,
                                           "onnxruntime", (1, 16, 16), runs=3)
    with pytest.raises(LatencyAgentError, match="cannot ask latency agent 'edge'"):
        AgentClient(agent.address).compare(networks.wide_onnx, networks.narrow_onnx,
                                           "onnxruntime", SHAPE, runs=0)


def test_an_agent_that_disappears_is_retried_then_fails_with_a_reason(
        networks: Networks) -> None:
    agent = start_agent()
    try:
        client = CountingClient(agent.address, RetryPolicy(wait_seconds=2, delays=(0.25,)))
        client.compare(networks.wide_onnx, networks.narrow_onnx, "onnxruntime", SHAPE, runs=3)
    finally:
        agent.stop()
    began = time.monotonic()
    with pytest.raises(LatencyAgentUnavailableError,
                       match=r"latency agent 'edge' at http://127\.0\.0\.1:\d+ did not answer "
                             r"for 2 s \(last: ConnectError"):
        client.compare(networks.wide_onnx, networks.narrow_onnx, "onnxruntime", SHAPE, runs=3)
    assert 1.5 <= time.monotonic() - began < 10
    assert len(client.pauses) >= 5


#: The most runs the agent's protocol allows, so the timing lasts past the cut on a fast host
#: (4000 runs of these small networks took 0.4 s on one, ending before a 0.5 s cut came).
CUT_RUNS = 10_000


def test_a_timing_cut_by_the_agent_dying_waits_for_it_and_loses_nothing(
        networks: Networks) -> None:
    agent = start_agent()
    client = CountingClient(agent.address, RetryPolicy(wait_seconds=90, delays=(0.25,)))
    outcome: dict[str, object] = {}

    def time_a_trial() -> None:
        try:
            outcome["result"] = client.compare(networks.wide_onnx, networks.narrow_onnx,
                                               "onnxruntime", SHAPE, warmup=0, runs=CUT_RUNS)
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = error

    trial = threading.Thread(target=time_a_trial)
    trial.start()
    try:
        deadline = time.monotonic() + 60
        while client.sent.count("POST compare") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # the models are uploaded and the long timing has begun
        time.sleep(0.1)
        agent.stop()  # mid-timing
        time.sleep(1.5)
        assert trial.is_alive() and client.pauses, "the client should be waiting"
        agent = start_agent(agent.port)  # back, and without the models it was sent
        trial.join(timeout=120)
    finally:
        agent.stop()
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert isinstance(result, CompareResult) and result.runs == CUT_RUNS
    assert client.sent.count("PUT models") == 4  # sent again to the restarted agent


def test_a_busy_device_tells_waiting_requests_when_to_come_back() -> None:
    import asyncio

    async def scenario() -> Refusal:
        gate = DeviceGate(max_waiting=0, wait_seconds=5)
        async with gate.hold():
            try:
                async with gate.hold():
                    pass
            except Refusal as refusal:
                return refusal
        raise AssertionError("the second hold should be refused")

    refusal = asyncio.run(scenario())
    assert refusal.status == 503 and refusal.retry_after is not None
    assert refusal.response().headers["Retry-After"] == str(refusal.retry_after)


def test_the_agent_refuses_to_start_unsafely() -> None:
    with pytest.raises(SettingsError, match="TOPIARY_LATENCY_AGENT_SECRET"):
        settings_from([], environ={})
    with pytest.raises(SettingsError, match="plain http on 0.0.0.0"):
        settings_from(["--host", "0.0.0.0"], environ={SECRET_VARIABLE: SECRET})
    settings = settings_from(["--host", "0.0.0.0", "--allow-plain-http"],
                             environ={SECRET_VARIABLE: SECRET})
    assert settings.host == "0.0.0.0" and SECRET not in repr(settings)
