"""Have a remote latency agent (``topiary latency-agent``) time two networks side by side.

Both networks are exported to ONNX here and sent to the agent by sha256
(``core.latency_agent``): a model the agent already holds is not sent again. An agent
that does not answer, or stays busy, is asked again with growing pauses (the agent's
``Retry-After`` when it gives one) for ``RetryPolicy.wait_seconds``; then
``LatencyAgentUnavailableError`` (transient: the search runs the trial again). An
agent that refuses (its secret, a model it cannot run) raises ``LatencyAgentError``
at once with the agent's reason.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
from pydantic import ValidationError
from torch import nn

from core.errors import LatencyAgentError, LatencyAgentUnavailableError
from core.latency_agent import (
    AGENTS_VARIABLE,
    COMPARE_PATH,
    MODELS_PATH,
    WAIT_VARIABLE,
    AgentAddress,
    AgentProblem,
    CompareRequest,
    CompareResult,
    agent_address,
)
from models.export import export_onnx
from models.latency import LatencyResult

__all__ = ["AgentClient", "RetryPolicy", "compare_on_agent"]

#: Statuses that mean "ask again later": too slow, rate limited, busy, a proxy that lost it.
_TRANSIENT_STATUSES = frozenset({408, 429, 502, 503, 504})
#: Rounds of uploading models the agent says it lacks before giving up (it keeps too few).
_MAX_UPLOAD_ROUNDS = 3


@dataclass(frozen=True)
class RetryPolicy:
    """How long, and with which pauses, an unanswering agent is asked again.

    Attributes:
        wait_seconds: total time one timing may spend waiting for the agent.
        delays: pauses between attempts (the last one repeats).
    """

    wait_seconds: float = 120.0
    delays: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)

    def delay(self, attempt: int) -> float:
        return self.delays[min(attempt, len(self.delays) - 1)]

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> RetryPolicy:
        """``wait_seconds`` from ``TOPIARY_LATENCY_AGENT_WAIT_SECONDS`` when set."""
        value = (os.environ if environ is None else environ).get(WAIT_VARIABLE)
        if not value:
            return cls()
        try:
            return cls(wait_seconds=max(0.0, float(value)))
        except ValueError:
            raise LatencyAgentError(f"{WAIT_VARIABLE}={value!r} is not a number of seconds; "
                                    "fix the worker's environment") from None


class _AskAgain(Exception):
    """An attempt that may succeed later: why, and how long the agent asked us to wait."""

    def __init__(self, reason: str, after: float | None = None) -> None:
        super().__init__(reason)
        self.after = after


class AgentClient:
    """Talks to one agent.

    Args:
        address: where it listens and its secret.
        retry: how long to wait for it.
        request_seconds: read timeout of one request (a timing answers when it ends).
        sleep: how to pause (tests pass a fake).
    """

    def __init__(self, address: AgentAddress, retry: RetryPolicy | None = None,
                 request_seconds: float = 600.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.address = address
        self.retry = retry or RetryPolicy()
        self.request_seconds = request_seconds
        self.sleep = sleep

    def _http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.address.url, verify=self.address.ca_bundle or True,
            headers={"Authorization": f"Bearer {self.address.secret}"},
            timeout=httpx.Timeout(self.request_seconds, connect=10.0, write=120.0))

    def compare(self, reference: bytes, candidate: bytes, runtime: str,
                input_shape: tuple[int, ...], batch_size: int = 1, warmup: int = 5,
                runs: int = 30, threads: int | None = None) -> CompareResult:
        """Time two ONNX files side by side on the agent.

        Raises:
            LatencyAgentError: the agent refused (the message gives its reason).
            LatencyAgentUnavailableError: it did not answer for ``retry.wait_seconds``.
        """
        models = {hashlib.sha256(data).hexdigest(): data for data in (reference, candidate)}
        digests = list(models)
        try:
            request = CompareRequest(
                reference=digests[0], candidate=digests[-1], runtime=runtime,  # type: ignore[arg-type]
                input_shape=list(input_shape), batch_size=batch_size, warmup=warmup,
                runs=runs, threads=threads)
        except ValidationError as error:
            raise LatencyAgentError(f"cannot ask latency agent {self.address.name!r} for this "
                                    f"timing: {error.errors()[0]['msg']}") from None
        deadline = time.monotonic() + self.retry.wait_seconds
        attempt, rounds = 0, 0
        with self._http() as http:
            while True:
                try:
                    result = self._ask(http, request)
                    if isinstance(result, CompareResult):
                        return result
                    rounds += 1
                    self._upload_missing(http, result, models, rounds)
                    continue
                except _AskAgain as again:
                    pause = again.after if again.after is not None else self.retry.delay(attempt)
                    attempt += 1
                    if time.monotonic() + pause > deadline:
                        raise self._unavailable(str(again)) from None
                    self.sleep(pause)

    def _ask(self, http: httpx.Client, request: CompareRequest) -> CompareResult | list[str]:
        """One timing request: the result, or the digests the agent lacks."""
        response = self._send(http, "POST", COMPARE_PATH, request.model_dump_json().encode(),
                              "application/json")
        if response.status_code == 200:
            return CompareResult.model_validate_json(response.content)
        problem = self._problem(response)
        if response.status_code == 404 and problem.missing:
            return problem.missing
        raise self._refused(response, problem)

    def _upload_missing(self, http: httpx.Client, missing: list[str],
                        models: Mapping[str, bytes], rounds: int) -> None:
        name = self.address.name
        if rounds > _MAX_UPLOAD_ROUNDS:
            raise LatencyAgentError(f"latency agent {name!r} keeps dropping the models it is "
                                    "sent before timing them; start it with a larger "
                                    "--max-models")
        for digest in missing:
            if digest not in models:
                raise LatencyAgentError(f"latency agent {name!r} asked for a model this worker "
                                        f"did not send ({digest[:12]}...)")
            response = self._send(http, "PUT", f"{MODELS_PATH}/{digest}", models[digest],
                                  "application/octet-stream")
            if response.status_code not in (200, 201):
                raise self._refused(response, self._problem(response))

    def _send(self, http: httpx.Client, method: str, path: str, body: bytes,
              content_type: str) -> httpx.Response:
        try:
            response = http.request(method, path, content=body,
                                    headers={"Content-Type": content_type})
        except httpx.TransportError as error:
            raise _AskAgain(f"{type(error).__name__}: {error}".rstrip(": ")) from None
        if response.status_code in _TRANSIENT_STATUSES:
            raise _AskAgain(f"HTTP {response.status_code}: "
                            f"{self._problem(response).detail}",
                            after=_retry_after(response))
        return response

    @staticmethod
    def _problem(response: httpx.Response) -> AgentProblem:
        try:
            return AgentProblem.model_validate_json(response.content)
        except ValidationError:
            return AgentProblem(error="http_error", detail=response.text[:300].strip()
                                or response.reason_phrase)

    def _refused(self, response: httpx.Response, problem: AgentProblem) -> LatencyAgentError:
        return LatencyAgentError(f"latency agent {self.address.name!r} at {self.address.url} "
                                 f"refused the request (HTTP {response.status_code}, "
                                 f"{problem.error}): {problem.detail}")

    def _unavailable(self, reason: str) -> LatencyAgentUnavailableError:
        return LatencyAgentUnavailableError(
            f"latency agent {self.address.name!r} at {self.address.url} did not answer for "
            f"{self.retry.wait_seconds:.0f} s (last: {reason}); check that `topiary "
            f"latency-agent` runs there and that {AGENTS_VARIABLE} on the worker points at it")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return min(float(value), 60.0) if value.isdigit() else None


class _ExportCache:
    """The ONNX file of the last reference network, by its weights: the unpruned network
    is the same in every trial, and exporting it takes seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key = ""
        self._data = b""

    def get(self, model: nn.Module, input_shape: tuple[int, ...]) -> bytes:
        key = _network_key(model, input_shape)
        with self._lock:
            if key == self._key:
                return self._data
        data = onnx_bytes(model, input_shape)
        with self._lock:
            self._key, self._data = key, data
        return data


def _network_key(model: nn.Module, input_shape: tuple[int, ...]) -> str:
    digest = hashlib.sha256(repr(input_shape).encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        raw = tensor.detach().cpu().contiguous().flatten().view(torch.uint8)
        digest.update(raw.numpy().tobytes())
    return digest.hexdigest()


def onnx_bytes(model: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """``model`` exported as ``models.export.export_onnx`` exports it, as bytes."""
    with tempfile.TemporaryDirectory(prefix="topiary-agent-") as folder:
        path = Path(folder) / "network.onnx"
        export_onnx(model, path, input_shape)
        return path.read_bytes()


_references = _ExportCache()


def compare_on_agent(reference: nn.Module, candidate: nn.Module, input_shape: tuple[int, ...],
                     runtime: str, target: str | AgentAddress, batch_size: int = 1,
                     warmup: int = 5, runs: int = 30, threads: int | None = None,
                     retry: RetryPolicy | None = None) -> tuple[LatencyResult, LatencyResult]:
    """Export both networks and have the agent ``target`` time them side by side.

    Args:
        target: an agent's name (looked up in this worker's environment,
            ``core.latency_agent.agent_address``) or its address.
        retry: how long to wait for it (default: ``RetryPolicy.from_environment``).
        Others as ``models.runtimes.compare_in_runtime``.

    Returns:
        ``(reference's latency, candidate's latency)``, device named after the agent.

    Raises:
        LatencyAgentError: the agent is not configured here, or refused.
        LatencyAgentUnavailableError: it did not answer for the whole wait.
        ExportError: a network cannot be exported to ONNX.
    """
    address = target if isinstance(target, AgentAddress) else agent_address(target)
    client = AgentClient(address, retry or RetryPolicy.from_environment())
    result = client.compare(_references.get(reference, input_shape),
                            onnx_bytes(candidate, input_shape), runtime, input_shape,
                            batch_size=batch_size, warmup=warmup, runs=runs, threads=threads)
    device = f"{result.device_name} (latency agent {address.name})"
    return tuple(  # type: ignore[return-value]
        LatencyResult(median_ms=timing.median_ms, p90_ms=timing.p90_ms, runs=result.runs,
                      batch_size=result.batch_size, device_type=result.device_type,
                      device_name=device, threads=result.threads)
        for timing in (result.reference, result.candidate))
