"""Where a network runs: resolve a device name, move a model there for a while, a sample batch.

``input_shape`` is ONE sample's shape, without the batch dimension.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from core.errors import InvalidSpecError
from models.groups import eval_mode

__all__ = ["DeviceUnavailableError", "device_name", "model_device", "on_device", "resolve_device",
           "sample_batch"]


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


def model_device(model: nn.Module) -> torch.device:
    tensor: Tensor | None = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@contextmanager
def on_device(model: nn.Module, device: torch.device) -> Iterator[None]:
    """The model on ``device`` and in eval mode for the block; where and how it was after."""
    original = model_device(model)
    with eval_mode(model):
        model.to(device)
        try:
            yield
        finally:
            model.to(original)


def sample_batch(input_shape: tuple[int, ...], batch_size: int, device: torch.device) -> Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn((batch_size, *input_shape), generator=generator).to(device)




def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"

