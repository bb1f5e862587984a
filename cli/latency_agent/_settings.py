"""What an agent is started with; every resource a request can spend is bounded here."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from cli.latency_agent._timing import available_runtimes
from core.latency_agent import MIN_SECRET_LENGTH

__all__ = ["AgentSettings", "SettingsError"]


class SettingsError(Exception):
    """An agent that must not start as configured (the message says what to change)."""


class AgentSettings(BaseModel):
    """Options of ``topiary latency-agent`` (each is a ``--flag`` of the same name)."""

    model_config = ConfigDict(extra="forbid")

    secret: SecretStr = Field(min_length=MIN_SECRET_LENGTH, exclude=True)
    host: str = Field(default="127.0.0.1", description="bind address")
    port: int = Field(default=8765, ge=1, le=65535)
    runtime: Literal["auto", "onnxruntime", "openvino"] = Field(
        default="auto", description="runtimes offered: auto = every one installed here")
    device: Literal["cpu", "cuda"] = Field(
        default="cpu", description="cuda: onnxruntime's CUDA execution provider")
    threads: int | None = Field(default=None, ge=1, le=256,
                                description="intra-op threads when a request names none")
    max_model_mib: int = Field(default=64, ge=1, le=4096, description="largest upload")
    max_models: int = Field(default=8, ge=2, le=256, description="models kept on disk")
    max_input_elements: int = Field(default=1 << 26, ge=1, le=1 << 31,
                                    description="largest input batch, in float32 values")
    max_timing_seconds: float = Field(default=300.0, gt=0, le=24 * 3600,
                                      description="longest timing")
    queue_seconds: float = Field(default=60.0, ge=0, le=3600,
                                 description="how long a request waits for the device "
                                             "before it is told to retry (503)")
    max_waiting: int = Field(default=4, ge=0, le=64,
                             description="requests waiting for the device at once")
    max_uploads: int = Field(default=2, ge=1, le=16, description="uploads at once")
    upload_seconds: float = Field(default=300.0, gt=0, le=3600,
                                  description="longest an upload may take")
    max_connections: int = Field(default=32, ge=2, le=1024,
                                 description="open connections at once (more get 503)")
    folder: Path | None = Field(default=None,
                                description="where models are kept (default: a temporary one)")
    tls_certfile: Path | None = Field(default=None, description="serve https with this cert")
    tls_keyfile: Path | None = Field(default=None, description="and this key")
    allow_plain_http: bool = Field(
        default=False, description="serve plain http on a non-loopback address (the secret "
                                   "crosses the network in clear)")

    @property
    def max_model_bytes(self) -> int:
        return self.max_model_mib << 20

    def runtimes(self) -> list[str]:
        """The runtimes this agent offers.

        Raises:
            SettingsError: none (or not the one asked for) is installed.
        """
        installed = available_runtimes()
        offered: list[str] = installed if self.runtime == "auto" else \
            [self.runtime] if self.runtime in installed else []
        if not offered:
            raise SettingsError(f"no latency runtime to offer: install onnxruntime or openvino "
                                f"(installed: {', '.join(installed) or 'none'})")
        return offered

    def check_transport(self) -> None:
        """Plain http only on loopback unless ``allow_plain_http``; TLS needs cert and key.

        Raises:
            SettingsError: the combination is unsafe or incomplete.
        """
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise SettingsError("give both --tls-certfile and --tls-keyfile, or neither")
        if self.tls_certfile is not None or self.allow_plain_http or _is_loopback(self.host):
            return
        raise SettingsError(f"refusing plain http on {self.host}: the secret would cross the "
                            "network in clear; give --tls-certfile and --tls-keyfile, or "
                            "--allow-plain-http on a network you trust")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
