"""Load ONNX files into ONNX Runtime or OpenVINO and time two of them side by side.

No torch here: this runs on the device a user deploys to. A model that cannot be
checked, loaded or fed the requested input raises ``ModelRefused`` with the reason.
"""

from __future__ import annotations

import importlib.util
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.latency_agent import AGENT_RUNTIMES, CompareRequest, CompareResult, NetworkTiming
from core.ov_core import shared_core

__all__ = ["ModelRefused", "TimingTooLong", "available_runtimes", "check_model",
           "compare_models", "cpu_name"]


class ModelRefused(Exception):
    """A model this agent cannot run as asked (the message says why)."""


class TimingTooLong(Exception):
    """A timing that would run past the agent's time limit."""


def available_runtimes() -> list[str]:
    """The runtimes installed here (found, not imported)."""
    return [name for name in AGENT_RUNTIMES if importlib.util.find_spec(name) is not None]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def check_model(path: Path) -> None:
    """Check the file with ``onnx.checker`` when the ``onnx`` package is installed.

    Raises:
        ModelRefused: not an ONNX model, or an invalid one.
    """
    if importlib.util.find_spec("onnx") is None:
        return  # loading it into the runtime checks it as well
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as error:  # noqa: BLE001 - protobuf and checker errors alike
        raise ModelRefused(f"not a valid ONNX model: {_first_line(error)}") from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:500]


@dataclass
class _Session:
    run: Callable[[np.ndarray], object]
    declared_shape: list[int | None]


def _onnxruntime_session(path: Path, device: str, threads: int | None) -> _Session:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise ModelRefused("this agent's onnxruntime has no CUDA execution provider")
        providers.insert(0, "CUDAExecutionProvider")
    session = onnxruntime.InferenceSession(str(path), options, providers=providers)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelRefused(f"the model has {len(inputs)} inputs; one image input is expected")
    name = inputs[0].name
    shape = [size if isinstance(size, int) else None for size in inputs[0].shape]
    return _Session(run=lambda batch: session.run(None, {name: batch}), declared_shape=shape)


def _openvino_session(path: Path, threads: int | None) -> _Session:
    core = shared_core()  # never one Core per network: see core.ov_core
    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    model = core.read_model(str(path))
    if len(model.inputs) != 1:
        raise ModelRefused(f"the model has {len(model.inputs)} inputs; one image input "
                           "is expected")
    partial = model.inputs[0].get_partial_shape()
    shape = [dimension.get_length() if dimension.is_static else None for dimension in partial]
    request = core.compile_model(model, "CPU", config).create_infer_request()
    return _Session(run=lambda batch: request.infer({0: batch}), declared_shape=shape)


def load_session(path: Path, runtime: str, device: str, threads: int | None) -> _Session:
    """Load ``path`` into ``runtime``.

    Raises:
        ModelRefused: the runtime is not installed here or cannot load the model.
    """
    if runtime not in available_runtimes():
        raise ModelRefused(f"runtime {runtime!r} is not installed on this agent (it has "
                           f"{', '.join(available_runtimes()) or 'none'})")
    if runtime == "openvino" and device != "cpu":
        raise ModelRefused("the openvino runtime times on the CPU only")
    try:
        if runtime == "onnxruntime":
            return _onnxruntime_session(path, device, threads)
        return _openvino_session(path, threads)
    except ModelRefused:
        raise
    except Exception as error:  # noqa: BLE001 - every runtime raises its own types
        raise ModelRefused(f"{runtime} cannot load the model: {_first_line(error)}") from error


def _check_input(session: _Session, batch_shape: tuple[int, ...], which: str) -> None:
    declared = session.declared_shape
    fits = len(declared) == len(batch_shape) and all(
        size is None or size == wanted for size, wanted in zip(declared, batch_shape,
                                                               strict=True))
    if not fits:
        shown = ["?" if size is None else size for size in declared]
        raise ModelRefused(f"the {which} model takes input {shown}, not {list(batch_shape)}")


def _run_checked(session: _Session, batch: np.ndarray, which: str) -> None:
    try:
        session.run(batch)
    except Exception as error:  # noqa: BLE001 - a first pass that fails says why
        raise ModelRefused(f"the {which} model fails on input {list(batch.shape)}: "
                           f"{_first_line(error)}") from error


def compare_models(reference: Path, candidate: Path, request: CompareRequest, device: str,
                   default_threads: int | None, max_seconds: float) -> CompareResult:
    """Time two models side by side: warm-up, then ``runs`` alternating timed passes.

    Raises:
        ModelRefused: a model cannot be loaded or run on the requested input.
        TimingTooLong: the passes would take more than ``max_seconds``.
    """
    threads = request.threads if request.threads is not None else default_threads
    batch_shape = (request.batch_size, *request.input_shape)
    batch = np.random.default_rng(0).standard_normal(batch_shape, dtype=np.float32)
    sessions = []
    for which, path in (("reference", reference), ("candidate", candidate)):
        session = load_session(path, request.runtime, device, threads)
        _check_input(session, batch_shape, which)
        _run_checked(session, batch, which)
        sessions.append(session)
    deadline = time.monotonic() + max_seconds
    for _ in range(request.warmup):
        for session in sessions:
            session.run(batch)
        _check_deadline(deadline, max_seconds)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(request.runs):
        for session, sink in zip(sessions, times, strict=True):
            began = time.perf_counter()
            session.run(batch)
            sink.append((time.perf_counter() - began) * 1000.0)
        _check_deadline(deadline, max_seconds)
    return CompareResult(
        runtime=request.runtime, device_type=device,
        device_name=cpu_name() if device == "cpu" else f"{device} ({request.runtime})",
        threads=threads or 0, batch_size=request.batch_size, runs=request.runs,
        reference=_timing(times[0]), candidate=_timing(times[1]))


def _check_deadline(deadline: float, max_seconds: float) -> None:
    if time.monotonic() > deadline:
        raise TimingTooLong(f"the timing ran past this agent's limit of {max_seconds:.0f} s; "
                            "ask for fewer runs or a smaller batch, or start the agent with a "
                            "larger --max-timing-seconds")


def _timing(times: list[float]) -> NetworkTiming:
    return NetworkTiming(median_ms=float(np.median(times)),
                         p90_ms=float(np.percentile(times, 90)), times_ms=times)
