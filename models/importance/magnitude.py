"""Baseline scores from Torch-Pruning: L1 filter magnitude and first-order Taylor.

Channel scores are Torch-Pruning's own group importances, unnormalised and
averaged over the coupled layers of the group
(``GroupMagnitudeImportance(p=1, normalizer=None, group_reduction="mean")`` and
``GroupTaylorImportance(normalizer=None, group_reduction="mean")``). A group's
score is the mean of its channel scores.

Block scores: magnitude = mean absolute value of the block's weights (conv
filters and normalisation scales); Taylor = mean |weight x gradient| over the
block's parameters, a first-order estimate of how much the loss depends on them.
Taylor needs gradients: one backward pass per calibration batch (``batches``),
accumulated, and cleared again afterwards.
"""

from __future__ import annotations

from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.nn import functional

from models.datasets import DataSplits

from .base import calibration_batches
from .targets import ScoringTargets, eval_mode

MAGNITUDE_SETTINGS: dict[str, Any] = {"p": 1}
TAYLOR_SETTINGS: dict[str, Any] = {"batches": 4, "batch_size": 32}


def _group_scores(model: nn.Module, targets: ScoringTargets,
                  importance: tp.importance.Importance) -> tuple[dict[str, Tensor],
                                                                 dict[str, float]]:
    modules = dict(model.named_modules())
    channel: dict[str, Tensor] = {}
    group: dict[str, float] = {}
    for name, layers in targets.groups.items():
        root = modules[name]
        tp_group = targets.dependency_graph.get_pruning_group(
            root, tp.prune_conv_out_channels, idxs=list(range(layers.channels)))
        values = importance(tp_group)
        if values is None:
            values = torch.zeros(layers.channels)
        channel[name] = values.detach().float().cpu()
        group[name] = float(channel[name].mean())
    return channel, group


def _block_weights(block: nn.Module) -> list[torch.Tensor]:
    return [module.weight for module in block.modules()
            if isinstance(module, nn.modules.conv._ConvNd | nn.modules.batchnorm._BatchNorm)
            and getattr(module, "weight", None) is not None]


def magnitude_scores(model: nn.Module, splits: DataSplits, targets: ScoringTargets,
                     settings: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, float],
                                                        dict[str, float]]:
    """L1 (or Lp) magnitude of each channel's weights across its group; no data needed."""
    importance = tp.importance.GroupMagnitudeImportance(
        p=settings["p"], normalizer=None, group_reduction="mean")
    channel, group = _group_scores(model, targets, importance)
    block: dict[str, float] = {}
    for name, module in targets.blocks.items():
        weights = _block_weights(module)
        block[name] = (float(torch.cat([w.detach().abs().flatten() for w in weights]).mean())
                       if weights else 0.0)
    return channel, group, block


def taylor_scores(model: nn.Module, splits: DataSplits, targets: ScoringTargets,
                  settings: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, float],
                                                     dict[str, float]]:
    """First-order Taylor importance from gradients of the calibration loss.

    The parameters' ``.grad`` and ``requires_grad`` are restored afterwards.
    """
    device = next(model.parameters()).device
    parameters = list(model.parameters())
    saved = [(p, p.grad, p.requires_grad) for p in parameters]
    try:
        for parameter in parameters:
            parameter.grad = None
            parameter.requires_grad_(True)
        with eval_mode(model), torch.enable_grad():
            for images, labels in calibration_batches(splits, settings["batch_size"],
                                                      limit=settings["batches"]):
                loss = functional.cross_entropy(model(images.to(device)), labels.to(device))
                loss.backward()
        for parameter in parameters:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
        importance = tp.importance.GroupTaylorImportance(normalizer=None, group_reduction="mean")
        channel, group = _group_scores(model, targets, importance)
        block: dict[str, float] = {}
        for name, module in targets.blocks.items():
            products = [(p.detach() * p.grad).abs().flatten() for p in module.parameters()
                        if p.grad is not None]
            block[name] = float(torch.cat(products).mean()) if products else 0.0
    finally:
        for parameter, grad, flag in saved:
            parameter.grad = grad
            parameter.requires_grad_(flag)
    return channel, group, block
