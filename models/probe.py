"""A training-free estimate of how good a pruned network will be after fine-tuning.

Adaptive BatchNorm (EagleEye, Li et al., ECCV 2020): prune a copy, re-estimate
its BatchNorm statistics on the calibration split (no weight changes), and take
the cross-entropy on that split. The statistics of an unpruned network are wrong
for a pruned one (dropped blocks and channels shift every later layer's inputs);
once recalibrated, the loss ranks candidates much as their fine-tuned accuracy
does, for the cost of two passes over a small split.

``block_elimination_order`` uses it to choose residual blocks: drop, one at a
time, the block whose removal raises the loss least. At 50% of a 16x16
resnet20's CPU latency it keeps the best single block and the second best pair
of 21 (``bench/block_choice.py``), where importance scores rank whole stages
together and their pairs come 12th and 14th.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional

from models.datasets import DataSplits
from models.importance.base import calibration_batches
from models.plan import PrunePlan, apply_plan

#: Calibration images per batch; the split is read twice per probe.
PROBE_BATCH_SIZE = 128
#: At most this many batches per pass, so a probe costs the same on a large split.
PROBE_BATCHES = 4


def adaptive_bn_loss(model: nn.Module, splits: DataSplits) -> float:
    """Calibration cross-entropy of a copy of ``model`` whose BatchNorm statistics
    were re-estimated on the calibration split (``model`` itself is untouched).
    At most ``PROBE_BATCHES * PROBE_BATCH_SIZE`` images are read, the same ones twice.

    Raises:
        InvalidSpecError: the calibration split is empty.
    """
    device = next(model.parameters()).device
    batches = _batches(splits)
    probe = _recalibrate(model, batches)
    with torch.no_grad():
        total, count = 0.0, 0
        for images, labels in batches:
            logits = probe(images.to(device))
            total += float(functional.cross_entropy(logits.float(), labels.to(device),
                                                    reduction="sum"))
            count += int(labels.shape[0])
    return total / max(count, 1)


def recalibrated(model: nn.Module, splits: DataSplits) -> nn.Module:
    """A copy of ``model`` in eval mode whose BatchNorm statistics were re-estimated on
    the calibration split (the same images ``adaptive_bn_loss`` reads); ``model`` itself
    is untouched. Scored on other images, it is EagleEye's adaptive-BN accuracy."""
    return _recalibrate(model, _batches(splits))


def _recalibrate(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> nn.Module:
    device = next(model.parameters()).device
    probe = copy.deepcopy(model).train()
    with torch.no_grad():
        for module in probe.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None  # a cumulative average over the batches
        for images, _labels in batches:
            if images.shape[0] > 1:  # BatchNorm cannot train on a single sample
                probe(images.to(device))
    return probe.eval()


def _batches(splits: DataSplits) -> list[tuple[Tensor, Tensor]]:
    batches = []
    for batch in calibration_batches(splits, PROBE_BATCH_SIZE):
        batches.append(batch)
        if len(batches) == PROBE_BATCHES:
            break
    return batches


def plan_loss(model: nn.Module, plan: PrunePlan, example_input: Tensor,
              splits: DataSplits) -> float:
    """``adaptive_bn_loss`` of ``model`` pruned by ``plan`` (a copy is pruned)."""
    return adaptive_bn_loss(apply_plan(copy.deepcopy(model), plan, example_input), splits)


def block_elimination_order(model: nn.Module, example_input: Tensor, splits: DataSplits,
                            blocks: Sequence[str]) -> list[str]:
    """``blocks`` in the order a greedy elimination by ``adaptive_bn_loss`` drops them
    (first: the block the network misses least). Costs ``n (n + 1) / 2`` probes."""
    dropped: list[str] = []
    remaining = list(blocks)
    while remaining:
        losses = {name: plan_loss(model, PrunePlan(drop_blocks=[*dropped, name]), example_input,
                                  splits) for name in remaining}
        chosen = min(remaining, key=losses.__getitem__)
        dropped.append(chosen)
        remaining.remove(chosen)
    return dropped
