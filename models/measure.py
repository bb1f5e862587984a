"""What a network costs: MACs and parameters, memory, and latency on a device.

Conventions used throughout:

* ``input_shape`` is the shape of ONE sample, without the batch dimension
  (``(3, 32, 32)``); functions that run batches take ``batch_size`` separately.
* MACs are counted per sample by ptflops' ``aten`` backend: multiply-accumulates
  of convolutions and matrix multiplies (the convention papers report, e.g.
  ResNet-56 at 32x32 = 125.7 M). BatchNorm, activations and residual adds are
  not counted, so an identity (a dropped block) costs nothing. Counting runs on a
  deep copy; the model is left as it was.
* Memory is in MiB (2**20 bytes): parameter + buffer bytes, plus the peak
  activation memory of one forward pass at ``batch_size``.
* Functions that run the model on ``device`` move it there for the measurement
  and move it back to the device it was on afterwards (in place, so parameter
  objects are kept); its train/eval mode is restored too.
"""

from __future__ import annotations

import copy
import platform
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ptflops import get_model_complexity_info
from torch import Tensor, nn

from core.errors import InvalidSpecError, TopiaryError
from models.groups import eval_mode

__all__ = [
    "DeviceUnavailableError",
    "LatencyResult",
    "Measurement",
    "count_flops_params",
    "measure_model",
    "measure_latency",
    "compare_latency",
    "latency_against",
    "memory_mb",
    "model_bytes",
    "peak_activation_bytes",
    "resolve_device",
]

MIB = 2**20


class DeviceUnavailableError(InvalidSpecError):
    """A latency device that does not exist on this machine."""

    code = "device_unavailable"


def resolve_device(name: str | torch.device) -> torch.device:
    """Turn a device spec into a ``torch.device`` that exists here.

    Args:
        name: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        DeviceUnavailableError: CUDA asked for but absent, an index past the
            device count, or a name that is none of the above.
    """
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as error:
        raise DeviceUnavailableError(
            f"unknown device {str(name)!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from error
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise DeviceUnavailableError(
            f"device type {device.type!r} is not supported; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device {str(name)!r} asked for, but this machine has no usable CUDA GPU; "
            "use 'cpu' or 'auto', or run the worker on a GPU machine")
    count = torch.cuda.device_count()
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= count:
        raise DeviceUnavailableError(
            f"device {str(name)!r} does not exist: this machine has {count} CUDA device(s), "
            f"cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", index)


def _model_device(model: nn.Module) -> torch.device:
    tensor: Tensor | None = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@contextmanager
def _on_device(model: nn.Module, device: torch.device) -> Iterator[None]:
    """The model on ``device`` and in eval mode for the block; where and how it was after."""
    original = _model_device(model)
    with eval_mode(model):
        model.to(device)
        try:
            yield
        finally:
            model.to(original)


def _sample_batch(input_shape: tuple[int, ...], batch_size: int, device: torch.device) -> Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn((batch_size, *input_shape), generator=generator).to(device)


def count_flops_params(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """MACs per sample and parameter count, through ptflops (``aten`` backend).

    Args:
        model: the network (not modified: ptflops runs on a deep copy).
        input_shape: one sample's shape, e.g. ``(3, 32, 32)``.

    Returns:
        ``(macs, params)``; params counts every parameter, trainable or not.

    Raises:
        TopiaryError: ptflops could not run the model on that input.
    """
    counted = copy.deepcopy(model)
    counted.requires_grad_(True)  # ptflops counts only parameters that require grad
    device = _model_device(counted)
    macs, params = get_model_complexity_info(
        counted, tuple(input_shape), as_strings=False, print_per_layer_stat=False,
        backend="aten", input_constructor=lambda shape: torch.zeros((1, *shape), device=device))
    if macs is None or params is None:
        raise TopiaryError(f"ptflops could not count MACs of {type(model).__name__} on input "
                           f"{tuple(input_shape)}; check that the input shape fits the network")
    return int(macs), int(params)


def model_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers (what the weights take in memory)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


class _LiveActivations:
    """Tracks the bytes of module outputs that are still referenced, and their peak.

    A storage counts from the moment a module returns a tensor on it until the
    last tracked tensor viewing it is garbage-collected (in-place ops and views
    share a storage and count once).
    """

    def __init__(self) -> None:
        self.current = 0
        self.peak = 0
        self._storages: dict[int, list[int]] = {}  # data_ptr -> [bytes, tracked tensors]

    def track(self, tensor: Tensor) -> None:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        entry = self._storages.get(pointer)
        if entry is None:
            entry = self._storages[pointer] = [storage.nbytes(), 0]
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(tensor, self._release, pointer)

    def _release(self, pointer: int) -> None:
        entry = self._storages.get(pointer)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self._storages[pointer]


def _cpu_peak_activation_bytes(model: nn.Module, batch: Tensor) -> int:
    live = _LiveActivations()

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        for tensor in output if isinstance(output, tuple | list) else (output,):
            if isinstance(tensor, Tensor):
                live.track(tensor)

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [module.register_forward_hook(hook) for module in leaves]
    try:
        live.track(batch)
        with torch.inference_mode():
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return live.peak


def peak_activation_bytes(model: nn.Module, input_shape: tuple[int, ...], batch_size: int,
                          device: str | torch.device = "cpu") -> int:
    """Peak memory of activations during one inference forward pass.

    On CUDA it is exact for the allocator: ``torch.cuda.max_memory_allocated``
    during the pass minus what was allocated before the input was created
    (input + activations + per-call workspaces). One untimed pass goes first,
    so what CUDA libraries allocate once and keep (cuBLAS's workspace, say) is
    counted in neither the first network measured nor any later one. On CPU it
    is an estimate from forward hooks on every leaf module: the input plus the
    outputs of leaf modules that are still referenced, at their peak sum.
    Temporaries inside a module and results of functional ops outside modules
    that are never passed through one are not seen.

    Args:
        model: the network (moved to ``device`` for the pass, then back).
        input_shape: one sample's shape.
        batch_size: samples in the batch.
        device: where to run (see ``resolve_device``).
    """
    target = resolve_device(device)
    with _on_device(model, target):
        if target.type == "cuda":
            with torch.inference_mode():
                model(_sample_batch(input_shape, batch_size, target))
            torch.cuda.synchronize(target)
            torch.cuda.reset_peak_memory_stats(target)
            before = torch.cuda.memory_allocated(target)
            batch = _sample_batch(input_shape, batch_size, target)
            with torch.inference_mode():
                model(batch)
            torch.cuda.synchronize(target)
            return int(torch.cuda.max_memory_allocated(target) - before)
        return _cpu_peak_activation_bytes(model, _sample_batch(input_shape, batch_size, target))


@dataclass
class LatencyResult:
    """Latency of one forward pass, from ``runs`` timed passes after warm-up.

    Attributes:
        median_ms: median wall time of a pass, milliseconds.
        p90_ms: 90th percentile, milliseconds.
        runs: timed passes.
        batch_size: samples per pass.
        device_type: ``cpu`` or ``cuda``.
        device_name: CPU model or GPU name.
        threads: torch intra-op threads during the measurement.
    """

    median_ms: float
    p90_ms: float
    runs: int
    batch_size: int
    device_type: str
    device_name: str
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[int]:
    previous = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise InvalidSpecError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def _time_passes(model: nn.Module, batch: Tensor, device: torch.device, warmup: int,
                 runs: int) -> list[float]:
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            for _ in range(runs):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                model(batch)
                end.record()
                torch.cuda.synchronize(device)
                times.append(float(start.elapsed_time(end)))
        else:
            for _ in range(runs):
                began = time.perf_counter()
                model(batch)
                times.append((time.perf_counter() - began) * 1000.0)
    return times


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], device: str | torch.device,
                    batch_size: int = 1, warmup: int = 5, runs: int = 30,
                    threads: int | None = None) -> LatencyResult:
    """Time inference passes: warm-up, then the median and p90 of ``runs`` passes.

    Runs under ``torch.inference_mode`` in eval mode; on CUDA each pass is timed
    with CUDA events and a synchronize, on CPU with ``time.perf_counter``.

    Args:
        model: the network (moved to ``device`` for the measurement, then back).
        input_shape: one sample's shape.
        device: where to run (see ``resolve_device``).
        batch_size: samples per pass.
        warmup: untimed passes first.
        runs: timed passes (at least 1).
        threads: torch intra-op threads for the measurement; None keeps the
            current setting. The previous setting is restored afterwards.

    Raises:
        InvalidSpecError: runs, batch_size or threads below 1, warmup below 0.
        DeviceUnavailableError: the device does not exist here.
    """
    _check_timing(runs, batch_size, warmup)
    target = resolve_device(device)
    with _torch_threads(threads) as used_threads, _on_device(model, target):
        batch = _sample_batch(input_shape, batch_size, target)
        times = _time_passes(model, batch, target, warmup, runs)
    return _latency_result(times, batch_size, target, used_threads)


def compare_latency(reference: nn.Module, candidate: nn.Module, input_shape: tuple[int, ...],
                    device: str | torch.device, batch_size: int = 1, warmup: int = 5,
                    runs: int = 30, threads: int | None = None
                    ) -> tuple[LatencyResult, LatencyResult]:
    """Time two networks side by side: their timed passes alternate.

    Whatever else the machine runs meanwhile slows both alike, so the ratio of
    the two medians holds when absolute times drift (a baseline timed once, at
    another moment, does not). Arguments as ``measure_latency``.

    Returns:
        ``(reference's latency, candidate's latency)``.
    """
    _check_timing(runs, batch_size, warmup)
    target = resolve_device(device)
    with (_torch_threads(threads) as used_threads, _on_device(reference, target),
          _on_device(candidate, target)):
        batch = _sample_batch(input_shape, batch_size, target)
        _time_passes(reference, batch, target, warmup, 0)
        _time_passes(candidate, batch, target, warmup, 0)
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(runs):
            times[0].extend(_time_passes(reference, batch, target, 0, 1))
            times[1].extend(_time_passes(candidate, batch, target, 0, 1))
    return (_latency_result(times[0], batch_size, target, used_threads),
            _latency_result(times[1], batch_size, target, used_threads))


def latency_against(reference: nn.Module, candidate: nn.Module,
                    input_shape: tuple[int, ...], device: str | torch.device,
                    reference_ms: float, batch_size: int = 1, warmup: int = 5,
                    runs: int = 30) -> dict[str, float]:
    """``candidate``'s latency where ``reference`` took ``reference_ms``, from a
    side-by-side timing (``compare_latency``): the measured ratio scales the
    recorded reference, so load on the machine now does not shift it.

    Returns:
        ``latency_ms`` and ``latency_p90_ms`` (scaled), ``latency_ratio`` and
        ``latency_raw_ms`` (the candidate's plain median now).
    """
    reference_now, timed = compare_latency(reference, candidate, input_shape, device,
                                           batch_size=batch_size, warmup=warmup, runs=runs)
    scale = reference_ms / reference_now.median_ms
    return {"latency_ms": timed.median_ms * scale, "latency_p90_ms": timed.p90_ms * scale,
            "latency_ratio": timed.median_ms / reference_now.median_ms,
            "latency_raw_ms": timed.median_ms}


def _check_timing(runs: int, batch_size: int, warmup: int) -> None:
    if runs < 1 or batch_size < 1 or warmup < 0:
        raise InvalidSpecError(f"need runs >= 1, batch_size >= 1, warmup >= 0; got runs={runs}, "
                               f"batch_size={batch_size}, warmup={warmup}")


def _latency_result(times: list[float], batch_size: int, target: torch.device,
                    threads: int) -> LatencyResult:
    return LatencyResult(
        median_ms=float(np.median(times)),
        p90_ms=float(np.percentile(times, 90)),
        runs=len(times),
        batch_size=batch_size,
        device_type=target.type,
        device_name=_device_name(target),
        threads=threads,
    )


@dataclass
class Measurement:
    """Everything a trial records about a network's cost.

    Attributes:
        macs: multiply-accumulates per sample (see the module docstring).
        params: parameter count.
        model_mb: parameters + buffers, MiB.
        peak_activation_mb: peak activation memory at ``batch_size``, MiB.
        memory_mb: ``model_mb + peak_activation_mb``.
        latency_ms: median latency of one pass at ``batch_size``.
        latency_p90_ms: its 90th percentile.
        batch_size, device_type, device_name, threads: how latency was measured.
    """

    macs: int
    params: int
    model_mb: float
    peak_activation_mb: float
    memory_mb: float
    latency_ms: float
    latency_p90_ms: float
    batch_size: int
    device_type: str
    device_name: str
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _memory_parts_mb(model: nn.Module, input_shape: tuple[int, ...], batch_size: int,
                     device: torch.device) -> tuple[float, float]:
    return (model_bytes(model) / MIB,
            peak_activation_bytes(model, input_shape, batch_size, device) / MIB)


def memory_mb(model: nn.Module, input_shape: tuple[int, ...], batch_size: int = 1,
              device: str | torch.device = "cpu") -> float:
    """``measure_model(...).memory_mb`` alone: weights plus peak activations, MiB."""
    return sum(_memory_parts_mb(model, input_shape, batch_size, resolve_device(device)))


def measure_model(model: nn.Module, input_shape: tuple[int, ...],
                  device: str | torch.device = "cpu", batch_size: int = 1,
                  warmup: int = 5, runs: int = 30,
                  threads: int | None = None) -> Measurement:
    """MACs, parameters, memory and latency of ``model`` in one record.

    The model ends where it started: same device, same train/eval mode, same
    weights (it is moved to ``device`` only while it runs there).

    Args:
        model: the network.
        input_shape: one sample's shape, e.g. ``(3, 32, 32)``.
        device: latency and activation-memory device (``auto``, ``cpu``, ``cuda:N``).
        batch_size: batch for latency and activation memory.
        warmup: untimed passes before timing.
        runs: timed passes.
        threads: torch intra-op threads while timing (None: current setting).

    Raises:
        DeviceUnavailableError: the device does not exist here.
    """
    target = resolve_device(device)
    macs, params = count_flops_params(model, input_shape)
    weights_mb, activation_mb = _memory_parts_mb(model, input_shape, batch_size, target)
    latency = measure_latency(model, input_shape, target, batch_size=batch_size, warmup=warmup,
                              runs=runs, threads=threads)
    return Measurement(
        macs=macs,
        params=params,
        model_mb=weights_mb,
        peak_activation_mb=activation_mb,
        memory_mb=weights_mb + activation_mb,
        latency_ms=latency.median_ms,
        latency_p90_ms=latency.p90_ms,
        batch_size=batch_size,
        device_type=latency.device_type,
        device_name=latency.device_name,
        threads=latency.threads,
    )
