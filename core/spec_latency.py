"""The job spec's ``latency`` section: where and in what runtime networks are timed, and
the channel multiple pruned widths default to for that runtime and device."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.latency_agent import AGENT_NAME_PATTERN, AGENT_RUNTIMES

__all__ = ["CPU_ROUND_TO", "CUDA_ROUND_TO", "INT8_ROUND_TO", "LatencyRuntime", "LatencySpec",
           "default_round_to"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


LatencyRuntime = Literal["torch", "onnxruntime", "openvino", "tensorrt"]


class LatencySpec(_Strict):
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    batch_size: int = Field(default=1, ge=1, le=1024)
    warmup: int = Field(default=5, ge=0, le=1000)
    runs: int = Field(default=30, ge=3, le=10_000)
    runtime: LatencyRuntime = Field(
        default="torch",
        description="what trials and the final model are timed in, side by side with the "
                    "unpruned network exported the same way: torch (PyTorch eager), "
                    "onnxruntime (CPU; its CUDA provider on GPU workers), openvino (CPU), "
                    "tensorrt (CUDA workers that have it). Only a worker that has the "
                    "runtime takes the job; nothing falls back to another runtime")
    precision: Literal["fp16", "int8"] | None = Field(
        default=None, description="tensorrt only: fp16 (the default) or int8; the other "
                                  "runtimes time float32")
    threads: int | None = Field(
        default=None, ge=1, le=256,
        description="intra-op threads of every timing; null: on a CPU worker all its "
                    "threads but one (at least 1), elsewhere the runtime's default")
    target: str | None = Field(
        default=None, pattern=f"^{AGENT_NAME_PATTERN}$",
        description="a latency agent's name: trials are exported to ONNX and timed by "
                    "`topiary latency-agent` on the device it runs on (in latency.runtime, "
                    "onnxruntime or openvino). Workers map the name to an address and a "
                    "secret in TOPIARY_LATENCY_AGENTS and TOPIARY_LATENCY_AGENT_SECRET; no "
                    "secret is ever part of a job. null: timed on the worker")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d{1,2})?", value):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        return value

    @model_validator(mode="after")
    def _runtime_fits_device(self) -> LatencySpec:
        if self.precision is not None and self.runtime != "tensorrt":
            raise ValueError("precision fp16 or int8 is for runtime tensorrt; "
                             f"{self.runtime} times float32")
        if self.runtime == "openvino" and self.device.startswith("cuda"):
            raise ValueError("runtime openvino times on the CPU; use device cpu or auto")
        if self.runtime == "tensorrt" and self.device == "cpu":
            raise ValueError("runtime tensorrt times on a CUDA GPU; use device cuda or auto")
        return self

    @model_validator(mode="after")
    def _agent_runtime(self) -> LatencySpec:
        if self.target is not None and self.runtime not in AGENT_RUNTIMES:
            raise ValueError(f"a latency agent (target {self.target!r}) times in "
                             f"{' or '.join(AGENT_RUNTIMES)}; set latency.runtime to one of "
                             f"them, not {self.runtime}")
        return self

    def timed_precision(self) -> str:
        """What networks are timed in: ``fp32``, or for TensorRT ``fp16`` (default) or ``int8``."""
        if self.runtime != "tensorrt":
            return "fp32"
        return self.precision or "fp16"

    def required_device_type(self) -> str | None:
        """The device type a worker must have: the spec's, or the one its runtime times on
        (TensorRT: cuda, OpenVINO: cpu); None when any will do (``auto``)."""
        if self.runtime == "tensorrt":
            return "cuda"
        if self.runtime == "openvino":
            return "cpu"
        return None if self.device == "auto" else self.device.split(":")[0]

    def device_type(self, worker_device_type: str) -> str:
        """Where timings run: ``required_device_type``, else the worker's."""
        return self.required_device_type() or worker_device_type


#: Channel multiple of pruned widths on the CPU when the spec gives none, chosen with
#: ``bench/latency.py --mode round-to`` (ONNX Runtime and OpenVINO, batch 1, uniform keeps
#: 0.35-0.5 of cifar_resnet56, resnet18 and mobilenet_v2 at multiples of 1, 4, 8 and 16):
#: unaligned widths ran up to twice as slow as aligned ones of the same MACs, and 8 cost
#: less latency per MAC kept than 4 in both runtimes. 16 looked cheaper per MAC only
#: because it keeps 16-channel layers whole, taking most of a small network's choices away.
CPU_ROUND_TO = 8
#: On CUDA and with TensorRT: tensor cores take channels in multiples of 8 (int8: 32).
CUDA_ROUND_TO = 8
INT8_ROUND_TO = 32


def default_round_to(latency: LatencySpec, device_type: str) -> int:
    """The channel multiple of pruned widths for a runtime and the device type it times on."""
    if latency.timed_precision() == "int8":
        return INT8_ROUND_TO
    if latency.device_type(device_type) == "cuda":
        return CUDA_ROUND_TO
    return CPU_ROUND_TO
