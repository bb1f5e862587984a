"""The latency agent's wire protocol and where workers find agents; torch-free.

A latency agent (``topiary latency-agent``, ``cli.latency_agent``) runs on the device a
user deploys to and times ONNX models that workers send it (``models.agent_client``).
Both sides import this module, so paths, limits and messages are declared once.

Everything on the wire is JSON or a raw ONNX file; nothing is ever unpickled. A model
is uploaded once under its sha256 (``PUT /v1/models/{sha256}``) and a timing names
the two models by digest (``POST /v1/compare``), so the unpruned network crosses the
network once per agent, not once per trial.

A job names an agent (``latency.target``); the worker maps the name to an address
and a secret from its own environment, so no secret is ever stored in a job:

* ``TOPIARY_LATENCY_AGENTS``: ``name=url`` pairs separated by commas,
  e.g. ``edge=http://10.0.0.7:8765,jetson=https://jetson.lan:8765``.
* ``TOPIARY_LATENCY_AGENT_SECRET``: the secret the agents were started with;
  ``TOPIARY_LATENCY_AGENT_SECRET_<NAME>`` (upper case, ``-`` and ``.`` as ``_``)
  overrides it for one agent.
* ``TOPIARY_LATENCY_AGENT_WAIT_SECONDS``: how long one timing keeps retrying an agent
  that does not answer or stays busy before the trial fails (default 120).
* ``TOPIARY_LATENCY_AGENT_CA``: a CA bundle for agents served over https.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from core.errors import LatencyAgentError

__all__ = ["AGENTS_VARIABLE", "AGENT_NAME_PATTERN", "AGENT_RUNTIMES", "CA_VARIABLE",
           "COMPARE_PATH", "DIGEST_PATTERN", "HEALTH_PATH", "INFO_PATH", "MIN_SECRET_LENGTH",
           "MODELS_PATH", "SECRET_VARIABLE", "WAIT_VARIABLE", "AgentAddress", "AgentProblem",
           "CompareRequest", "CompareResult", "NetworkTiming", "agent_address",
           "configured_agents"]

HEALTH_PATH = "/healthz"
INFO_PATH = "/v1/info"
MODELS_PATH = "/v1/models"
COMPARE_PATH = "/v1/compare"

AGENT_RUNTIMES = ("onnxruntime", "openvino")
AGENT_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
DIGEST_PATTERN = r"[0-9a-f]{64}"
MIN_SECRET_LENGTH = 16

AGENTS_VARIABLE = "TOPIARY_LATENCY_AGENTS"
SECRET_VARIABLE = "TOPIARY_LATENCY_AGENT_SECRET"
WAIT_VARIABLE = "TOPIARY_LATENCY_AGENT_WAIT_SECONDS"
CA_VARIABLE = "TOPIARY_LATENCY_AGENT_CA"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CompareRequest(_Strict):
    """Time two uploaded models side by side (``POST /v1/compare``)."""

    reference: str = Field(pattern=f"^{DIGEST_PATTERN}$", description="sha256 of the unpruned")
    candidate: str = Field(pattern=f"^{DIGEST_PATTERN}$", description="sha256 of the pruned")
    runtime: Literal["onnxruntime", "openvino"] = "onnxruntime"
    input_shape: list[int] = Field(min_length=1, max_length=5,
                                   description="one sample's shape, without the batch")
    batch_size: int = Field(default=1, ge=1, le=1024)
    warmup: int = Field(default=5, ge=0, le=1000)
    runs: int = Field(default=30, ge=1, le=10_000)
    threads: int | None = Field(default=None, ge=1, le=256,
                                description="the runtime's intra-op threads; null: the agent's")

    def input_elements(self) -> int:
        count = self.batch_size
        for size in self.input_shape:
            count *= size
        return count


class NetworkTiming(_Strict):
    median_ms: float
    p90_ms: float
    times_ms: list[float]


class CompareResult(_Strict):
    """What ``POST /v1/compare`` answers: both networks' timings, passes alternating."""

    runtime: str
    device_type: str
    device_name: str
    threads: int = Field(description="the runtime's intra-op threads; 0: its default")
    batch_size: int
    runs: int
    reference: NetworkTiming
    candidate: NetworkTiming


class AgentProblem(_Strict):
    """Every refusal: a stable code and a message that says what to do.

    ``missing`` (``unknown_models``, 404): digests the agent does not hold; upload them.
    """

    error: str
    detail: str
    missing: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class AgentAddress:
    """Where a named agent listens and the secret it expects (kept out of ``repr``)."""

    name: str
    url: str
    secret: str = field(repr=False)
    ca_bundle: str | None = None


def configured_agents(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The agents this process knows: name -> URL, from ``TOPIARY_LATENCY_AGENTS``.

    Raises:
        LatencyAgentError: the variable is malformed.
    """
    environ = os.environ if environ is None else environ
    agents: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in
                               environ.get(AGENTS_VARIABLE, "").split(","))):
        name, _, url = entry.partition("=")
        name, url = name.strip(), url.strip().rstrip("/")
        if not re.fullmatch(AGENT_NAME_PATTERN, name) or not re.match(r"https?://[^/]", url):
            raise LatencyAgentError(
                f"{AGENTS_VARIABLE} entry {entry!r} is not name=http(s)://host:port; "
                "fix the worker's environment")
        agents[name] = url
    return agents


def _secret_variable(name: str) -> str:
    return f"{SECRET_VARIABLE}_{re.sub(r'[^A-Z0-9]', '_', name.upper())}"


def agent_address(name: str, environ: Mapping[str, str] | None = None) -> AgentAddress:
    """The address and secret of agent ``name`` from this worker's environment.

    Raises:
        LatencyAgentError: the agent is not configured here, or has no secret.
    """
    environ = os.environ if environ is None else environ
    agents = configured_agents(environ)
    if name not in agents:
        known = ", ".join(sorted(agents)) or "none"
        raise LatencyAgentError(
            f"latency agent {name!r} is not configured on this worker (known: {known}); add "
            f"{name}=http://host:port to {AGENTS_VARIABLE} in the worker's environment")
    secret = environ.get(_secret_variable(name)) or environ.get(SECRET_VARIABLE, "")
    if len(secret) < MIN_SECRET_LENGTH:
        raise LatencyAgentError(
            f"no secret for latency agent {name!r}: set {SECRET_VARIABLE} (or "
            f"{_secret_variable(name)}) on the worker to the secret the agent was started "
            f"with (at least {MIN_SECRET_LENGTH} characters)")
    return AgentAddress(name=name, url=agents[name], secret=secret,
                        ca_bundle=environ.get(CA_VARIABLE) or None)
