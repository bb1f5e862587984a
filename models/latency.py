"""Latency of a network on a device: warm-up, timed passes, median and p90.

Two networks are best timed side by side (``compare_latency``): their passes
alternate, so load on the machine slows both alike and the ratio holds.
Functions move the model to ``device`` for the timing and back afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from core.errors import InvalidSpecError
from models.devices import device_name, on_device, resolve_device, sample_batch

__all__ = ["LatencyResult", "compare_latency", "latency_against", "latency_result",
           "measure_latency", "torch_threads"]


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
        fastest_ms: the fastest pass, milliseconds (None where only the median and p90
            are known, e.g. from a latency agent).
    """

    median_ms: float
    p90_ms: float
    runs: int
    batch_size: int
    device_type: str
    device_name: str
    threads: int
    fastest_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
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
    with torch_threads(threads) as used_threads, on_device(model, target):
        batch = sample_batch(input_shape, batch_size, target)
        times = _time_passes(model, batch, target, warmup, runs)
    return latency_result(times, batch_size, target, used_threads)


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
    with (torch_threads(threads) as used_threads, on_device(reference, target),
          on_device(candidate, target)):
        batch = sample_batch(input_shape, batch_size, target)
        _time_passes(reference, batch, target, warmup, 0)
        _time_passes(candidate, batch, target, warmup, 0)
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(runs):
            times[0].extend(_time_passes(reference, batch, target, 0, 1))
            times[1].extend(_time_passes(candidate, batch, target, 0, 1))
    return (latency_result(times[0], batch_size, target, used_threads),
            latency_result(times[1], batch_size, target, used_threads))


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


def latency_result(times: list[float], batch_size: int, target: torch.device,
                    threads: int) -> LatencyResult:
    return LatencyResult(
        median_ms=float(np.median(times)),
        p90_ms=float(np.percentile(times, 90)),
        runs=len(times),
        batch_size=batch_size,
        device_type=target.type,
        device_name=device_name(target),
        threads=threads,
        fastest_ms=float(min(times)),
    )
