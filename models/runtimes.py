"""Latency in the runtime a user deploys with: PyTorch eager, ONNX Runtime, OpenVINO.

A network is exported to ONNX once (``export_onnx``, the file the user downloads)
and loaded into the runtime; two loaded networks are timed side by side, their
passes alternating, as ``models.latency.compare_latency`` does for eager PyTorch.
Runtimes are optional packages: ``available_runtimes`` says which this process
can use, and asking for one that is missing raises instead of falling back.
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.errors import InvalidSpecError
from models.devices import resolve_device
from models.export import export_onnx
from models.latency import LatencyResult, compare_latency, latency_result

__all__ = ["RUNTIMES", "LoadedNetwork", "RuntimeUnavailableError", "available_runtimes",
           "compare_in_runtime", "load_network", "time_side_by_side"]

RUNTIMES = ("torch", "onnxruntime", "openvino")
_PACKAGES = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}


class RuntimeUnavailableError(InvalidSpecError):
    """A latency runtime this worker does not have (install its extra, or use another worker)."""

    code = "runtime_unavailable"


def available_runtimes() -> list[str]:
    """The runtimes whose packages this process can import (without importing them)."""
    return [name for name in RUNTIMES if importlib.util.find_spec(_PACKAGES[name]) is not None]


@dataclass
class LoadedNetwork:
    """One network ready to run in a runtime.

    Attributes:
        run: one forward pass on a batch (a NumPy array for exported runtimes).
        onnx_bytes: the exported file's size (0 for eager PyTorch).
    """

    run: Callable[[], object]
    onnx_bytes: int = 0


def _check_runtime(runtime: str, device: torch.device) -> None:
    if runtime not in RUNTIMES:
        raise InvalidSpecError(f"unknown latency runtime {runtime!r}; use one of "
                               f"{', '.join(RUNTIMES)}")
    if runtime not in available_runtimes():
        raise RuntimeUnavailableError(
            f"latency runtime {runtime!r} is not installed on this worker; install it "
            f"(pip install 'topiary[{runtime}]') or run the job on a worker that has it")
    if runtime == "openvino" and device.type != "cpu":
        raise RuntimeUnavailableError("the openvino runtime times on the CPU only; "
                                      "use device 'cpu' for it")


def _onnxruntime_session(path: Path, device: torch.device, threads: int | None
                         ) -> Callable[[np.ndarray], object]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda"
                 else ["CPUExecutionProvider"])
    if device.type == "cuda" and "CUDAExecutionProvider" not in \
            onnxruntime.get_available_providers():
        raise RuntimeUnavailableError("onnxruntime here has no CUDA execution provider; "
                                      "install onnxruntime-gpu on CUDA workers")
    session = onnxruntime.InferenceSession(str(path), options, providers=providers)
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})


def _openvino_session(path: Path, threads: int | None) -> Callable[[np.ndarray], object]:
    import openvino

    core = openvino.Core()
    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()
    return lambda batch: request.infer({0: batch})


def load_network(model: nn.Module, input_shape: tuple[int, ...], runtime: str,
                 device: str | torch.device = "cpu", batch_size: int = 1,
                 threads: int | None = None) -> LoadedNetwork:
    """Export ``model`` (ONNX runtimes) and load it, ready to time at ``batch_size``.

    Args:
        model: the network (left unchanged).
        input_shape: one sample's shape.
        runtime: ``torch``, ``onnxruntime`` or ``openvino``.
        device: ``cpu`` or a CUDA device (onnxruntime with its CUDA provider).
        batch_size: samples per pass.
        threads: the runtime's intra-op threads (None: its default).

    Raises:
        RuntimeUnavailableError: the runtime is not installed or cannot use the device.
        ExportError: the model cannot be exported to ONNX.
    """
    target = resolve_device(device)
    _check_runtime(runtime, target)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn((batch_size, *input_shape), generator=generator)
    if runtime == "torch":
        raise InvalidSpecError("eager PyTorch networks are timed by models.latency; "
                               "load_network is for exported runtimes")
    with tempfile.TemporaryDirectory(prefix="topiary-runtime-") as folder:
        path = Path(folder) / "network.onnx"
        export_onnx(model, path, input_shape)
        size = path.stat().st_size
        if runtime == "onnxruntime":
            session = _onnxruntime_session(path, target, threads)
        else:
            session = _openvino_session(path, threads)
    batch = sample.numpy()
    return LoadedNetwork(run=lambda: session(batch), onnx_bytes=size)


def time_side_by_side(reference: LoadedNetwork, candidate: LoadedNetwork, warmup: int,
                      runs: int) -> tuple[list[float], list[float]]:
    """Alternate timed passes of two loaded networks; milliseconds per pass of each."""
    for _ in range(warmup):
        reference.run()
        candidate.run()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for network, sink in ((reference, times[0]), (candidate, times[1])):
            began = time.perf_counter()
            network.run()
            sink.append((time.perf_counter() - began) * 1000.0)
    return times


def compare_in_runtime(reference: nn.Module, candidate: nn.Module, input_shape: tuple[int, ...],
                       runtime: str, device: str | torch.device = "cpu", batch_size: int = 1,
                       warmup: int = 5, runs: int = 30, threads: int | None = None
                       ) -> tuple[LatencyResult, LatencyResult]:
    """Time two networks side by side in ``runtime``, each exported the same way.

    ``torch`` is eager PyTorch (``compare_latency``). Other arguments as
    ``load_network``; ``warmup`` untimed and ``runs`` timed passes of each.

    Returns:
        ``(reference's latency, candidate's latency)``.
    """
    if runtime == "torch":
        return compare_latency(reference, candidate, input_shape, device, batch_size=batch_size,
                               warmup=warmup, runs=runs, threads=threads)
    if runs < 1 or warmup < 0:
        raise InvalidSpecError(f"need runs >= 1 and warmup >= 0, got {runs} and {warmup}")
    target = resolve_device(device)
    loaded = [load_network(network, input_shape, runtime, target, batch_size, threads)
              for network in (reference, candidate)]
    times = time_side_by_side(loaded[0], loaded[1], warmup, runs)
    used = threads if threads is not None else 0
    return (latency_result(times[0], batch_size, target, used),
            latency_result(times[1], batch_size, target, used))
