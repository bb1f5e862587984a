"""Top-1 accuracy of a network on a split or on any loader of (inputs, labels)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from core.errors import InvalidSpecError
from models.datasets import DataSplits
from models.optimizer import autocast

__all__ = ["evaluate"]


def _batches(splits_or_loader: DataSplits | Iterable[Any], split: str,
             batch_size: int) -> Iterable[Any]:
    if isinstance(splits_or_loader, DataSplits):
        return splits_or_loader.loader(split, batch_size)
    return splits_or_loader


def evaluate(model: nn.Module, splits_or_loader: DataSplits | Iterable[Any], split: str = "val",
             device: str | torch.device = "cpu", batch_size: int = 256,
             use_amp: bool = False) -> float:
    """Top-1 accuracy of ``model`` on one split (or on any loader of (inputs, labels)).

    The model is moved to ``device``; its training flag is restored afterwards.

    Args:
        model: the network.
        splits_or_loader: a ``DataSplits`` (then ``split`` is read) or an
            iterable of (inputs, labels) batches.
        split: which split of a ``DataSplits``.
        device: where to run.
        batch_size: batch size when reading a ``DataSplits``.
        use_amp: bfloat16 (or float16) autocast, as in training (CUDA only).

    Returns:
        Fraction of correctly classified samples, in [0, 1].

    Raises:
        InvalidSpecError: the data is empty.
    """
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    try:
        with torch.inference_mode(), autocast(device, use_amp and device.type == "cuda"):
            for inputs, labels in _batches(splits_or_loader, split, batch_size):
                labels = labels.to(device, non_blocking=True)
                predictions = model(inputs.to(device, non_blocking=True)).argmax(dim=1)
                correct += (predictions == labels).sum()
                total += labels.shape[0]
    finally:
        model.train(was_training)
    if total == 0:
        raise InvalidSpecError(f"cannot evaluate on an empty split ({split!r})")
    return correct.item() / total
