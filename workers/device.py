"""The worker's device: what it is called, its model, torch's threads on it, and the
latency runtimes this worker can time in there."""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.measure import resolve_device
from models.runtimes import tensorrt_present, usable_runtimes

log = logging.getLogger("topiary.worker")


@dataclass(frozen=True)
class WorkerDevice:
    """Attributes:
        name: what training and measuring use (``cpu``, ``cuda:0``).
        type: ``cpu`` or ``cuda``; jobs never mix latencies of two types.
        description: the device model (GPU name, or CPU model and thread count), recorded
            with every latency; a job whose latency is timed runs its trials on one model.
        runtimes: the latency runtimes (``latency.runtime``) it can time in.
        timing_threads: intra-op threads of a job's timings when its spec sets none
            (``latency.threads``): on the CPU all of torch's threads but one, as a timing
            that needs every core is stalled by anything else the machine runs (a trial's
            single timing of a small network then spreads from 0.3 to 1.0 of the unpruned
            one's, ``bench/latency.py --mode threads``); None on CUDA.
    """

    name: str
    type: str
    description: str
    runtimes: tuple[str, ...] = field(default=("torch",))
    timing_threads: int | None = None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def open_device(requested: str = "auto", threads: int | None = None) -> WorkerDevice:
    """Resolve ``auto`` (CUDA when present, else CPU), set torch's thread count and find
    the runtimes this worker can time in there.

    Raises:
        DeviceUnavailableError: a CUDA device that this machine does not have.
    """
    device = resolve_device(requested)
    if threads is not None:
        torch.set_num_threads(threads)
    runtimes = tuple(usable_runtimes(device))
    if tensorrt_present():
        log.warning("TensorRT is installed, but Topiary cannot time in it yet: this worker "
                    "does not take jobs with latency.runtime tensorrt (they stay queued)")
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return WorkerDevice(f"cuda:{index}", "cuda", torch.cuda.get_device_name(index),
                            runtimes)
    threads = torch.get_num_threads()
    return WorkerDevice("cpu", "cpu", f"{cpu_model()} ({threads} threads)", runtimes,
                        timing_threads=max(1, threads - 1))
