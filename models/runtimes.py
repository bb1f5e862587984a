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
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.errors import InvalidSpecError
from core.latency_agent import AGENT_RUNTIMES, AgentAddress
from core.ov_core import shared_core
from models.agent_client import compare_on_agent
from models.devices import resolve_device
from models.export import export_onnx
from models.latency import LatencyResult, compare_latency, latency_result

__all__ = ["RUNTIMES", "LoadedNetwork", "RuntimeUnavailableError", "SideBySide",
           "available_runtimes", "compare_in_runtime", "load_network", "load_onnx",
           "tensorrt_present", "time_side_by_side", "usable_runtimes"]

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
    core = shared_core()  # never one Core per network: see core.ov_core
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
    if runtime == "torch":
        raise InvalidSpecError("eager PyTorch networks are timed by models.latency; "
                               "load_network is for exported runtimes")
    with tempfile.TemporaryDirectory(prefix="topiary-runtime-") as folder:
        path = Path(folder) / "network.onnx"
        _export_for_timing(model, path, input_shape)
        return load_onnx(path, input_shape, runtime, target, batch_size, threads)


def _export_for_timing(model: nn.Module, path: Path, input_shape: tuple[int, ...]) -> None:
    """Export a copy that is only timed with the TorchScript-based exporter, falling back to
    ``export_onnx``: it takes seconds where the ``torch.export``-based one takes tens of
    seconds on a busy CPU, once per trial, and the runtime optimises both graphs alike (the
    file a user downloads is timed as written, ``load_onnx``)."""
    example = torch.zeros(2, *input_shape, device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(path), dynamo=False,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    except Exception:  # noqa: BLE001 - the deployment exporter is the one that must work
        export_onnx(model, path, input_shape)
    finally:
        model.train(was_training)


def load_onnx(path: str | Path, input_shape: tuple[int, ...], runtime: str,
              device: str | torch.device = "cpu", batch_size: int = 1,
              threads: int | None = None) -> LoadedNetwork:
    """Load an ONNX file (the one a user downloads, or a timing export) into ``runtime``,
    ready to time at ``batch_size`` on a fixed random batch.

    Raises:
        RuntimeUnavailableError: the runtime is not installed or cannot use the device.
    """
    target = resolve_device(device)
    _check_runtime(runtime, target)
    if runtime == "torch":
        raise InvalidSpecError("an ONNX file is timed in onnxruntime or openvino, not torch")
    if runtime == "onnxruntime":
        session = _onnxruntime_session(Path(path), target, threads)
    else:
        session = _openvino_session(Path(path), threads)
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn((batch_size, *input_shape), generator=generator).numpy()
    return LoadedNetwork(run=lambda: session(batch), onnx_bytes=Path(path).stat().st_size)


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
                       warmup: int = 5, runs: int = 30, threads: int | None = None,
                       target: str | AgentAddress | None = None
                       ) -> tuple[LatencyResult, LatencyResult]:
    """Time two networks side by side in ``runtime``, each exported the same way.

    ``torch`` is eager PyTorch (``compare_latency``). Other arguments as
    ``load_network``; ``warmup`` untimed and ``runs`` timed passes of each.
    With ``target`` (``latency.target``: a latency agent's name, or its address),
    both are exported to ONNX and timed by that agent on its device instead
    (``models.agent_client.compare_on_agent``; ``device`` is then not used).

    Returns:
        ``(reference's latency, candidate's latency)``.

    Raises:
        LatencyAgentError: ``target`` is not configured on this worker, or refused.
        LatencyAgentUnavailableError: ``target`` did not answer for the whole wait.
    """
    if target is not None:
        if runtime not in AGENT_RUNTIMES:
            raise InvalidSpecError(f"a latency agent times in {' or '.join(AGENT_RUNTIMES)}, "
                                   f"not {runtime}; set latency.runtime to one of them")
        return compare_on_agent(reference, candidate, input_shape, runtime, target,
                                batch_size=batch_size, warmup=warmup, runs=runs,
                                threads=threads)
    if runtime == "torch":
        return compare_latency(reference, candidate, input_shape, device, batch_size=batch_size,
                               warmup=warmup, runs=runs, threads=threads)
    if runs < 1 or warmup < 0:
        raise InvalidSpecError(f"need runs >= 1 and warmup >= 0, got {runs} and {warmup}")
    where = resolve_device(device)
    loaded = [load_network(network, input_shape, runtime, where, batch_size, threads)
              for network in (reference, candidate)]
    times = time_side_by_side(loaded[0], loaded[1], warmup, runs)
    used = threads if threads is not None else 0
    return (latency_result(times[0], batch_size, where, used),
            latency_result(times[1], batch_size, where, used))


class SideBySide:
    """The unpruned network loaded once in a runtime; candidates timed side by side with it.

    A search times hundreds of candidates against the same reference: exporting and
    loading it again for each would double the cost of every timing.

    Args:
        reference: the unpruned network (left unchanged), or its ONNX file.
        input_shape: one sample's shape.
        runtime: ``torch``, ``onnxruntime`` or ``openvino``.
        device, batch_size, threads: as ``load_network``.

    Raises:
        RuntimeUnavailableError: the runtime is not installed or cannot use the device.
    """

    def __init__(self, reference: nn.Module | str | Path, input_shape: tuple[int, ...],
                 runtime: str, device: str | torch.device = "cpu", batch_size: int = 1,
                 threads: int | None = None) -> None:
        self.input_shape = input_shape
        self.runtime = runtime
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.threads = threads
        _check_runtime(runtime, self.device)
        self._module: nn.Module | None = None
        self._loaded: LoadedNetwork | None = None
        if runtime == "torch":
            if not isinstance(reference, nn.Module):
                raise InvalidSpecError("eager PyTorch times networks, not ONNX files")
            self._module = reference
        else:
            self._loaded = self._load(reference)

    def _load(self, network: nn.Module | str | Path) -> LoadedNetwork:
        if isinstance(network, nn.Module):
            return load_network(network, self.input_shape, self.runtime, self.device,
                                self.batch_size, self.threads)
        return load_onnx(network, self.input_shape, self.runtime, self.device,
                         self.batch_size, self.threads)

    def load(self, candidate: nn.Module | str | Path) -> nn.Module | LoadedNetwork:
        """``candidate`` ready for ``compare``, to time it more than once without
        exporting or loading it again (eager PyTorch: the network itself)."""
        if self._module is not None:
            if not isinstance(candidate, nn.Module):
                raise InvalidSpecError("eager PyTorch times networks, not ONNX files")
            return candidate
        return self._load(candidate)

    def compare(self, candidate: nn.Module | str | Path | LoadedNetwork, warmup: int = 5,
                runs: int = 30) -> tuple[LatencyResult, LatencyResult]:
        """Time ``candidate`` (a network, an ONNX file, or what ``load`` returned) side by
        side with the reference.

        Returns:
            ``(reference's latency, candidate's latency)``.
        """
        if self._module is not None:
            if not isinstance(candidate, nn.Module):
                raise InvalidSpecError("eager PyTorch times networks, not ONNX files")
            return compare_latency(self._module, candidate, self.input_shape, self.device,
                                   batch_size=self.batch_size, warmup=warmup, runs=runs,
                                   threads=self.threads)
        if runs < 1 or warmup < 0:
            raise InvalidSpecError(f"need runs >= 1 and warmup >= 0, got {runs} and {warmup}")
        assert self._loaded is not None
        loaded = candidate if isinstance(candidate, LoadedNetwork) else self._load(candidate)
        times = time_side_by_side(self._loaded, loaded, warmup, runs)
        used = self.threads if self.threads is not None else 0
        return (latency_result(times[0], self.batch_size, self.device, used),
                latency_result(times[1], self.batch_size, self.device, used))


def usable_runtimes(device: str | torch.device = "cpu") -> list[str]:
    """The runtimes this process can time in on ``device``: installed, and able to use it
    (ONNX Runtime on a GPU needs its CUDA execution provider; OpenVINO times on the CPU).
    TensorRT is never listed: Topiary cannot time in it yet (``tensorrt_present``)."""
    target = resolve_device(device)
    usable = []
    for runtime in available_runtimes():
        try:
            _check_runtime(runtime, target)
            if runtime == "onnxruntime" and target.type == "cuda":
                import onnxruntime

                if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                    continue
        except RuntimeUnavailableError:
            continue
        usable.append(runtime)
    return usable


def tensorrt_present() -> bool:
    """Whether TensorRT and a CUDA GPU are both here (the runtime is not implemented)."""
    return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()
