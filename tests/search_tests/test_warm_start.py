"""Warm-start plans: every plan fits its FLOPs budget, follows the scores, obeys the bounds."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from models.architectures import build_model
from models.importance import ImportanceScores
from models.measure import count_flops_params
from models.plan import (
    BlockInfo,
    GroupInfo,
    PrunePlan,
    apply_plan,
    prunable_groups,
    removable_blocks,
)
from search.warm_start import (
    FlopsCounter,
    global_magnitude_plan,
    global_magnitude_schedule,
    uniform_plan_for_flops,
    warm_start_plans,
)
from tests.search_tests.conftest import Baseline

INPUT = (3, 16, 16)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def network() -> tuple[nn.Module, torch.Tensor, list[GroupInfo], list[BlockInfo], int]:
    torch.manual_seed(0)
    model = build_model("cifar_resnet20").eval()
    x = torch.zeros(1, *INPUT)
    baseline = count_flops_params(model, INPUT)[0]
    return model, x, prunable_groups(model, x, round_to=4), removable_blocks(model, x), baseline


def _scores(groups: list[GroupInfo], blocks: list[BlockInfo]) -> ImportanceScores:
    """Group importance rising with network position; blocks ranked layer3.1 < layer1.0 < ..."""
    group = {g.name: float(index) for index, g in enumerate(groups)}
    order = ["layer3.1", "layer1.0", "layer2.2", "layer1.2", "layer3.2", "layer1.1", "layer2.1"]
    block = {b.name: float(order.index(b.name)) for b in blocks}
    channel = {g.name: torch.arange(g.channels, dtype=torch.float32) for g in groups}
    return ImportanceScores("attention", channel, group, block, 0.0)


def _pruned_macs(model: nn.Module, plan: PrunePlan, x: torch.Tensor) -> int:
    return count_flops_params(apply_plan(copy.deepcopy(model), plan, x), INPUT)[0]


def _check_bounds(plan: PrunePlan, groups: list[GroupInfo], round_to: int) -> None:
    by_name = {g.name: g for g in groups}
    for name, kept in plan.keep.items():
        group = by_name[name]
        assert group.min_keep <= kept < group.channels
        assert kept % round_to == 0


def test_each_plan_meets_its_flops_budget(network) -> None:  # type: ignore[no-untyped-def]
    model, x, groups, blocks, baseline = network
    targets = (0.7, 0.5, 0.35)

    plans = warm_start_plans(model, x, groups, blocks, _scores(groups, blocks),
                             flops_targets=targets, round_to=4)

    assert [target for target, _ in plans] == list(targets)
    for target, plan in plans:
        macs = _pruned_macs(model, plan, x)
        assert macs <= target * baseline
        assert macs > 0.8 * target * baseline  # the budget is used, not wasted
        _check_bounds(plan, groups, 4)


def test_less_important_groups_keep_a_smaller_share(network) -> None:  # type: ignore[no-untyped-def]
    model, x, groups, blocks, _ = network
    scores = _scores(groups, blocks)

    [(_, plan)] = warm_start_plans(model, x, groups, blocks, scores, flops_targets=(0.4,),
                                   round_to=1, allow_block_removal=False)

    ratios = [plan.keep.get(g.name, g.channels) / g.channels for g in groups]
    assert ratios[0] < ratios[-1]
    same_width = [g for g in groups if g.channels == 64]  # stage 3, rising importance
    kept = [plan.keep.get(g.name, g.channels) for g in same_width]
    assert kept == sorted(kept) and kept[0] < kept[-1]


def test_least_important_blocks_are_dropped_first(network) -> None:  # type: ignore[no-untyped-def]
    model, x, groups, blocks, _ = network

    plans = dict(warm_start_plans(model, x, groups, blocks, _scores(groups, blocks),
                                  flops_targets=(0.7, 0.35), round_to=4))

    assert plans[0.7].drop_blocks == ["layer3.1"]
    assert plans[0.35].drop_blocks == ["layer3.1", "layer1.0"]
    for plan in plans.values():  # groups inside a dropped block are not listed
        dropped = set(plan.drop_blocks)
        assert not any(g.block in dropped for g in groups if g.name in plan.keep)


def test_block_removal_can_be_switched_off(network) -> None:  # type: ignore[no-untyped-def]
    model, x, groups, blocks, _ = network

    plans = warm_start_plans(model, x, groups, blocks, _scores(groups, blocks),
                             flops_targets=(0.5,), allow_block_removal=False)

    assert plans[0][1].drop_blocks == []


def test_unreachable_budget_is_left_out(network) -> None:  # type: ignore[no-untyped-def]
    model, x, groups, blocks, _ = network

    plans = warm_start_plans(model, x, groups, blocks, _scores(groups, blocks),
                             flops_targets=(0.001, 0.6), allow_block_removal=False)

    assert [target for target, _ in plans] == [0.6]


@pytest.mark.parametrize("target", [0.5, 0.3])
def test_uniform_plan_for_flops_meets_the_budget(network, target: float) -> None:  # type: ignore[no-untyped-def]
    model, x, groups, _, baseline = network
    counter = FlopsCounter(model, x)

    plan = uniform_plan_for_flops(model, x, groups, target, round_to=4, counter=counter)

    assert plan is not None
    macs = _pruned_macs(model, plan, x)
    assert macs == counter(plan)
    assert 0.8 * target * baseline < macs <= target * baseline
    _check_bounds(plan, groups, 4)
    by_width: dict[int, set[int]] = {}
    for group in groups:
        by_width.setdefault(group.channels, set()).add(plan.keep.get(group.name, group.channels))
    assert all(len(counts) == 1 for counts in by_width.values())  # one ratio for all
    assert by_width[16] != {16} and by_width[64] != {64}


def test_global_magnitude_schedule_only_narrows_down_to_the_floors(baseline: Baseline) -> None:
    x = baseline.splits.example_input()
    groups = prunable_groups(baseline.model, x, round_to=8)

    schedule = global_magnitude_schedule(baseline.model, x, groups, round_to=8, steps=20)

    assert len(schedule) == 21
    assert schedule[0] == {g.name: g.channels for g in groups}
    for wider, narrower in zip(schedule, schedule[1:], strict=False):
        assert all(narrower[name] <= wider[name] for name in wider)
    assert len({tuple(widths.values()) for widths in schedule}) > 5  # it narrows in steps
    floors = {g.name: -(-max(g.min_keep, 8) // 8) * 8 for g in groups}  # multiples of 8
    assert all(schedule[-1][g.name] <= floors[g.name] for g in groups)  # pruned to the floors
    middle = schedule[len(schedule) // 2]
    assert len({middle[g.name] / g.channels for g in groups}) > 1  # shares differ: global


@pytest.mark.parametrize("target", [0.5, 0.25])
def test_global_magnitude_plan_of_a_trained_network_uses_the_budget(
        baseline: Baseline, target: float) -> None:
    """On a trained network Torch-Pruning's one-step global ratio is not monotone (with a
    channel multiple of 8, a 25% budget found no plan at all): the stepped schedule is."""
    model, x = baseline.model, baseline.splits.example_input()
    groups = prunable_groups(model, x, round_to=8)
    counter = FlopsCounter(model, x)

    plan = global_magnitude_plan(model, x, groups,
                                 lambda plan: counter(plan) <= target * counter.baseline, 8)

    assert plan is not None and plan.drop_blocks == []
    assert 0.8 * target * counter.baseline < counter(plan) <= target * counter.baseline
    _check_bounds(plan, groups, 8)


def test_a_flops_counter_counting_widths_confirms_on_the_pruned_network(network) -> None:  # type: ignore[no-untyped-def]
    """``FlopsCounter(counted=True)`` counts plans from their widths, exactly as pruning
    them does; a count that differs from the pruned network's (a layer the width count
    does not model: here one a count misses by a MAC) drops the counting, and every
    plan is pruned and counted from then on."""
    model, x, groups, _, _ = network
    plans = [PrunePlan(keep={group.name: max(4, group.channels // share) for group in groups},
                       round_to=4) for share in (2, 4)]
    counter = FlopsCounter(model, x, counted=True)
    assert [counter(plan) for plan in plans] == [_pruned_macs(model, plan, x) for plan in plans]
    assert all(counter.confirm(plan) for plan in plans) and counter.costs.counting

    widths = counter.costs.counter
    assert widths is not None
    off_by_one = FlopsCounter(model, x, counted=True)
    off_by_one.costs.counter = lambda plan: (widths(plan)[0] + 1, widths(plan)[1])  # type: ignore[assignment]
    assert off_by_one(plans[0]) == _pruned_macs(model, plans[0], x) + 1
    assert not off_by_one.confirm(plans[0]) and not off_by_one.costs.counting
    assert off_by_one(plans[0]) == _pruned_macs(model, plans[0], x)
