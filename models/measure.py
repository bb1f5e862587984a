"""What a network costs: MACs and parameters, memory, and latency on a device (timed by
``models.latency``).

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
import weakref
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from core.errors import TopiaryError
from models.devices import (
    DeviceUnavailableError,
    model_device,
    on_device,
    resolve_device,
    sample_batch,
)
from models.latency import LatencyResult, compare_latency, latency_against, measure_latency

# Timing lives in models.latency and devices in models.devices; they are named here
# too because measure_model() is where most callers start.
__all__ = [
    "DeviceUnavailableError",
    "LatencyResult",
    "Measurement",
    "compare_latency",
    "count_flops_params",
    "latency_against",
    "measure_latency",
    "measure_model",
    "memory_mb",
    "model_bytes",
    "peak_activation_bytes",
    "resolve_device",
]

MIB = 2**20


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
    # Imported here: ptflops imports torchvision (and with it torch._dynamo), seconds a
    # worker would otherwise spend starting.
    from ptflops import get_model_complexity_info

    counted.requires_grad_(True)  # ptflops counts only parameters that require grad
    device = model_device(counted)
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
    with on_device(model, target):
        if target.type == "cuda":
            with torch.inference_mode():
                model(sample_batch(input_shape, batch_size, target))
            torch.cuda.synchronize(target)
            torch.cuda.reset_peak_memory_stats(target)
            before = torch.cuda.memory_allocated(target)
            batch = sample_batch(input_shape, batch_size, target)
            with torch.inference_mode():
                model(batch)
            torch.cuda.synchronize(target)
            return int(torch.cuda.max_memory_allocated(target) - before)
        return _cpu_peak_activation_bytes(model, sample_batch(input_shape, batch_size, target))


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
