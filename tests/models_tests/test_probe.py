"""The adaptive-BatchNorm probe on a briefly trained ResNet-20 (16x16 digits)."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from torch.nn import functional
from torch.utils.data import Subset

from models.architectures import build_model
from models.datasets import DataSplits, load_dataset
from models.importance.base import calibration_batches
from models.plan import PrunePlan, apply_plan, removable_blocks
from models.probe import adaptive_bn_loss, block_elimination_order, plan_loss
from models.train import TrainConfig, train_model


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, DataSplits]:
    torch.set_num_threads(1)
    splits = load_dataset("digits", image_size=16, seed=0)
    splits = dataclasses.replace(splits, train=Subset(splits.train, range(512)))
    torch.manual_seed(0)
    model = build_model("cifar_resnet20")
    train_model(model, splits, TrainConfig(epochs=2, learning_rate=0.05), eval_split=None)
    return model.eval(), splits


def _stale_loss(model: torch.nn.Module, splits: DataSplits) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for images, labels in calibration_batches(splits, 256):
            total += float(functional.cross_entropy(model(images), labels, reduction="sum"))
            count += labels.shape[0]
    return total / count


def test_recalibrated_statistics_rescue_a_network_with_blocks_dropped(trained) -> None:
    model, splits = trained
    before = copy.deepcopy(model.state_dict())
    example = splits.example_input()
    names = [block.name for block in removable_blocks(model, example)]
    pruned = apply_plan(copy.deepcopy(model), PrunePlan(drop_blocks=names[:4]), example).eval()

    recalibrated = adaptive_bn_loss(pruned, splits)

    assert math.isfinite(recalibrated) and recalibrated < _stale_loss(pruned, splits)
    assert plan_loss(model, PrunePlan(drop_blocks=names[:4]), example, splits) == \
        pytest.approx(recalibrated)
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())
    assert not model.training


def test_a_block_that_does_nothing_is_eliminated_first(trained) -> None:
    model, splits = trained
    silent = copy.deepcopy(model)
    # Zero the residual branch's last BatchNorm: the block passes its input through.
    with torch.no_grad():
        silent.layer2[2].bn2.weight.zero_()
        silent.layer2[2].bn2.bias.zero_()
    example = splits.example_input()
    names = [block.name for block in removable_blocks(silent, example)]

    order = block_elimination_order(silent, example, splits, names)

    assert sorted(order) == sorted(names) and order[0] == "layer2.2"
