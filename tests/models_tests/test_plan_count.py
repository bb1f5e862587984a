"""A plan's MACs and parameters counted from its widths equal those of its really pruned
network, counted by ptflops."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

from models import build_model, prunable_groups
from models.measure import count_flops_params
from models.plan import PrunePlan, apply_plan, removable_blocks
from models.plan_count import PlanCosts, PlanCounter
from tests.support.networks import ScaledNet, unwrapped_scale_warning


def _random_plans(model: nn.Module, x: torch.Tensor, round_to: int, count: int,
                  seed: int) -> list[PrunePlan]:
    rng = random.Random(seed)
    groups = prunable_groups(model, x, round_to=round_to)
    blocks = removable_blocks(model, x)
    plans = []
    for _ in range(count):
        keep = {group.name: min(group.channels, max(
            group.min_keep, rng.randint(group.min_keep, group.channels) // round_to * round_to))
            for group in groups}
        plans.append(PrunePlan(keep=keep, round_to=round_to,
                               drop_blocks=[b.name for b in blocks if rng.random() < 0.3]))
    return plans


# A plain and a bottleneck ResNet (blocks dropped), VGG (a linear layer after a flatten:
# each channel is H * W of its inputs), MobileNetV2 (depthwise convs, dropped blocks).
@pytest.mark.parametrize(("arch", "size"), [("cifar_resnet20", 16), ("vgg11_bn", 32),
                                            ("mobilenet_v2", 32), ("resnet50", 32)])
@pytest.mark.parametrize("round_to", [1, 8])
def test_counts_from_widths_equal_the_pruned_networks(arch: str, size: int,
                                                      round_to: int) -> None:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10)
    x = torch.zeros(1, 3, size, size)
    counter = PlanCounter(model, x)
    assert counter(PrunePlan(keep={}, drop_blocks=[], round_to=round_to)) == \
        count_flops_params(model, (3, size, size))
    plans = _random_plans(model, x, round_to, count=3, seed=round_to)
    assert any(plan.drop_blocks for plan in plans) or not removable_blocks(model, x)
    for plan in plans:
        pruned = apply_plan(copy.deepcopy(model), plan, x)
        assert counter(plan) == count_flops_params(pruned, (3, size, size)), plan


@unwrapped_scale_warning
def test_a_layer_the_count_does_not_model_counts_wrong_until_confirmed() -> None:
    """What ``PlanCosts.confirm`` is for: the count is refuted on the pruned network, and
    from then on every plan is pruned and counted (the search tests show the re-sizing)."""
    model, x = ScaledNet(), torch.zeros(1, 3, 8, 8)
    plan = PrunePlan(keep={"conv1": 8, "conv2": 8}, drop_blocks=[], round_to=1)
    real = count_flops_params(apply_plan(copy.deepcopy(model), plan, x), (3, 8, 8))
    assert PlanCounter(model, x)(plan) != real

    costs = PlanCosts(model, x)
    assert costs(plan) != real and costs.counting
    assert not costs.confirm(plan) and not costs.counting
    assert costs(plan) == real and costs.confirm(plan)


def test_counts_confirmed_on_the_pruned_network_go_on_counting() -> None:
    torch.manual_seed(0)
    model, x = build_model("cifar_resnet20", num_classes=10), torch.zeros(1, 3, 16, 16)
    costs = PlanCosts(model, x)
    plans = _random_plans(model, x, round_to=4, count=2, seed=3)
    assert all(costs.confirm(plan) for plan in plans) and costs.counting
    assert [costs(plan) for plan in plans] == [costs.pruned(plan) for plan in plans]
