"""Seeding: warm-start plans sized to the real limits, in several shapes, no wasted slot."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from torch import nn

from core.spec import Constraints
from models.architectures import build_model
from models.datasets import load_dataset
from models.importance import ImportanceScores
from models.measure import MIB, count_flops_params, model_bytes, peak_activation_bytes
from models.plan import (
    BlockInfo,
    GroupInfo,
    PrunePlan,
    apply_plan,
    prunable_groups,
    removable_blocks,
)
from search.constraints import Limit
from search.costs import LatencyCache
from search.fitting import MEASURED_MARGIN, PlanFit, fitted_plans
from search.seeding import PROBED_DEPTHS, PlanProbe, SeedTarget, seed_plans, target_ratio
from search.warm_start import FlopsCounter, shaped_plan
from tests.search_tests.conftest import ScriptedTimer
from tests.support.networks import ScaledNet, unwrapped_scale_warning

INPUT = (3, 16, 16)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def network() -> tuple[nn.Module, torch.Tensor, list[GroupInfo], list[BlockInfo]]:
    torch.manual_seed(0)
    model = build_model("cifar_resnet20").eval()
    x = torch.zeros(1, *INPUT)
    return model, x, prunable_groups(model, x, round_to=4), removable_blocks(model, x)


def _scores(method: str, groups: list[GroupInfo], blocks: list[BlockInfo],
            block_order: list[str]) -> ImportanceScores:
    group = {g.name: float(index) for index, g in enumerate(groups)}
    block = {b.name: float(block_order.index(b.name)) for b in blocks}
    channel = {g.name: torch.arange(g.channels, dtype=torch.float32) for g in groups}
    return ImportanceScores(method, channel, group, block, 0.0)


ORDER = ["layer3.1", "layer1.0", "layer2.2", "layer1.2", "layer3.2", "layer1.1", "layer2.1"]


def _counts(model: nn.Module, plan: PrunePlan, x: torch.Tensor) -> tuple[int, int]:
    return count_flops_params(apply_plan(copy.deepcopy(model), plan, x), INPUT)


def test_target_ratio_is_the_tightest_ratio_and_carries_the_limits() -> None:
    baseline = {"flops": 1000.0, "latency_ms": 2.0, "params": 50.0}

    target = target_ratio(Constraints(max_flops_ratio=0.6, max_latency_ms=0.8), baseline)

    assert isinstance(target, SeedTarget) and target.ratio == pytest.approx(0.4)
    limits = sorted((limit.metric, limit.limit) for limit in target.limits)
    assert limits == [("flops", pytest.approx(600.0)), ("latency_ms", pytest.approx(0.8))]
    assert target_ratio(Constraints(), baseline) is None


def test_plans_under_a_flops_limit_use_the_budget_in_several_shapes(network) -> None:  # type: ignore[no-untyped-def]
    model, x, groups, blocks = network
    baseline_flops = count_flops_params(model, INPUT)[0]
    scores = {"attention": _scores("attention", groups, blocks, ORDER),
              "pls": _scores("pls", groups, blocks, list(reversed(ORDER)))}
    target = target_ratio(Constraints(max_flops_ratio=0.4), {"flops": baseline_flops})

    plans = dict(seed_plans(model, x, groups, blocks, scores, target, round_to=4))

    assert list(plans) == ["uniform@0.40", "global/magnitude@0.40", "attention@0.40",
                           "pls@0.40", "attention/deep@0.40", "pls/deep@0.40",
                           "attention/wide@0.40", "pls/wide@0.40"]
    assert not any(plan.is_unpruned() for plan in plans.values())  # it would break the limit
    for plan in plans.values():
        assert 0.85 * 0.4 * baseline_flops < _counts(model, plan, x)[0] <= 0.4 * baseline_flops
    assert plans["attention@0.40"].drop_blocks == ORDER[:2]  # round(7 * 0.5 * 0.6)
    assert plans["pls@0.40"].drop_blocks == list(reversed(ORDER))[:2]
    assert plans["attention/deep@0.40"].drop_blocks == ORDER[:4]
    assert plans["uniform@0.40"].drop_blocks == plans["pls/wide@0.40"].drop_blocks == []
    assert plans["global/magnitude@0.40"].drop_blocks == []
    shares = {plans["global/magnitude@0.40"].keep.get(g.name, g.channels) / g.channels
              for g in groups}
    assert len(shares) > 1  # global ranking: layers keep different shares
    by_width: dict[int, set[int]] = {}
    for group in groups:  # the main shapes keep one share of every group
        if group.block not in plans["attention@0.40"].drop_blocks:
            by_width.setdefault(group.channels, set()).add(
                plans["attention@0.40"].keep.get(group.name, group.channels))
    assert all(len(counts) == 1 for counts in by_width.values())


def test_a_params_limit_is_checked_on_the_pruned_network(network) -> None:  # type: ignore[no-untyped-def]
    model, x, groups, blocks = network
    flops, params = count_flops_params(model, INPUT)
    scores = {"pls": _scores("pls", groups, blocks, ORDER)}
    target = target_ratio(Constraints(max_params_ratio=0.3), {"flops": flops, "params": params})

    plans = seed_plans(model, x, groups, blocks, scores, target, round_to=4)

    assert plans
    for _, plan in plans:
        assert 0.8 * 0.3 * params < _counts(model, plan, x)[1] <= 0.3 * params


def _seeded_on_pruned_networks(monkeypatch: pytest.MonkeyPatch,
                               *args: object, **kwargs: object) -> list[tuple[str, PrunePlan]]:
    """``seed_plans`` as it was when every check pruned and counted a copy."""
    with monkeypatch.context() as patch:
        patch.setattr("search.seeding.PlanFit",
                      lambda *a, counted=False, **k: PlanFit(*a, counted=False, **k))
        patch.setattr("search.seeding.FlopsCounter",
                      lambda *a, counted=False, **k: FlopsCounter(*a, counted=False, **k))
        return seed_plans(*args, **kwargs)  # type: ignore[arg-type]


def _fingerprints(plans: list[tuple[str, PrunePlan]]) -> list[tuple[str, str]]:
    return [(label, plan.fingerprint()) for label, plan in plans]


def _counting_prunes(monkeypatch: pytest.MonkeyPatch) -> list[PrunePlan]:
    """The plans pruned to size plans from now on (pruning them as before)."""
    pruned: list[PrunePlan] = []

    def counting_apply_plan(network: nn.Module, plan: PrunePlan, *args):  # type: ignore[no-untyped-def]
        pruned.append(plan)
        return apply_plan(network, plan, *args)

    for sizer in ("search.fitting", "models.plan_count"):
        monkeypatch.setattr(f"{sizer}.apply_plan", counting_apply_plan)
    return pruned


@pytest.mark.parametrize("limited", [True, False], ids=["limits", "no-limits"])
def test_plans_are_sized_by_counting_their_widths(  # type: ignore[no-untyped-def]
        network, monkeypatch, limited) -> None:
    """Under counted limits, and at the FLOPs budgets of the weighted and pareto modes
    (no limits), only the plans settled on are pruned (to confirm their counts), and they
    are the plans pruning every candidate gave."""
    model, x, groups, blocks = network
    flops, params = count_flops_params(model, INPUT)
    scores = {"pls": _scores("pls", groups, blocks, ORDER)}
    target = target_ratio(Constraints(max_flops_ratio=0.5, max_params_ratio=0.45),
                          {"flops": flops, "params": params}) if limited else None
    pruned = _counting_prunes(monkeypatch)
    plans = seed_plans(model, x, groups, blocks, scores, target, round_to=4)
    # Limits: uniform, global, pls, pls/deep, pls/wide; none: pls at 3 budgets, uniform.
    assert len(pruned) == len(plans) == (5 if limited else 4)
    assert _fingerprints(plans) == _fingerprints(
        _seeded_on_pruned_networks(monkeypatch, model, x, groups, blocks, scores, target,
                                   round_to=4))
    assert len(pruned) > 3 * len(plans)  # what pruning every check cost


@unwrapped_scale_warning
def test_a_plan_counted_wrong_from_its_widths_is_seeded_on_pruned_networks(  # type: ignore[no-untyped-def]
        monkeypatch) -> None:
    """A layer the count does not model (``tests/support/networks.py``): the confirmation
    sees the difference and the plans are sized again, every check pruning a copy."""
    torch.manual_seed(0)
    model, x = ScaledNet(), torch.zeros(1, 3, 8, 8)
    groups = prunable_groups(model, x, round_to=4)
    _, params = count_flops_params(model, (3, 8, 8))
    target = SeedTarget(0.5, (Limit("max_params_ratio", "params", 0.5 * params),))

    plans = seed_plans(model, x, groups, [], {}, target, round_to=4)

    assert plans and _fingerprints(plans) == _fingerprints(
        _seeded_on_pruned_networks(monkeypatch, model, x, groups, [], {}, target, round_to=4))
    for _, plan in plans:
        assert count_flops_params(apply_plan(copy.deepcopy(model), plan, x), (3, 8, 8))[1] \
            <= 0.5 * params


def test_a_plain_float_target_is_a_flops_budget(network) -> None:  # type: ignore[no-untyped-def]
    model, x, groups, blocks = network
    baseline_flops = count_flops_params(model, INPUT)[0]

    measured = LatencyCache()
    plans = seed_plans(model, x, groups, blocks, {}, 0.5, round_to=4, measured=measured)

    assert [label for label, _ in plans] == ["uniform@0.50", "global/magnitude@0.50"]
    assert len(measured) == 0  # nothing was timed: trials time these plans themselves
    assert _counts(model, plans[0][1], x)[0] <= 0.5 * baseline_flops


def test_latency_limits_are_timed_on_the_pruned_network(network) -> None:  # type: ignore[no-untyped-def]
    model, x, groups, blocks = network
    scores = {"pls": _scores("pls", groups, blocks, ORDER)}
    generous = Limit("max_latency_ratio", "latency_ms", 1e6)
    impossible = Limit("max_latency_ratio", "latency_ms", 1e-6)

    fit = PlanFit(model, x, [generous])
    assert fit.measured and fit(PrunePlan.unpruned())
    assert fit.metrics(PrunePlan.unpruned())["latency_ms"] > 0
    loose = seed_plans(model, x, groups, blocks, scores, SeedTarget(0.5, (generous,)),
                       round_to=4, allow_block_removal=False)
    assert [plan.is_unpruned() for _, plan in loose] == [True] * 4  # widest fits
    assert seed_plans(model, x, groups, blocks, scores, SeedTarget(0.5, (impossible,)),
                      round_to=4, allow_block_removal=False) == []


def test_shaped_plan_drops_the_least_important_blocks_and_fits(network) -> None:  # type: ignore[no-untyped-def]
    model, x, groups, blocks = network
    baseline_flops = count_flops_params(model, INPUT)[0]
    scores = _scores("attention", groups, blocks, ORDER)

    def fits(plan: PrunePlan) -> bool:
        return _counts(model, plan, x)[0] <= 0.3 * baseline_flops

    plan = shaped_plan(groups, blocks, fits, scores, drops=3, round_to=4)

    assert plan is not None and plan.drop_blocks == ORDER[:3] and fits(plan)
    assert shaped_plan(groups, blocks, lambda _: False, scores, drops=3) is None


def test_under_a_measured_limit_a_deeper_plan_may_keep_more(network) -> None:  # type: ignore[no-untyped-def]
    model, x, groups, blocks = network
    baseline_mb = (model_bytes(model) + peak_activation_bytes(model, INPUT, 1)) / MIB
    fit = PlanFit(model, x, [Limit("max_memory_ratio", "memory_mb", 0.5 * baseline_mb)])
    scores = _scores("pls", groups, blocks, ORDER)  # layer3.1 (heavy weights) goes first

    shallow = shaped_plan(groups, blocks, fit, scores, drops=0, round_to=4)
    chosen = fitted_plans(groups, blocks, fit, scores, drops=0, round_to=4)[0]

    assert shallow is not None and chosen is not None and fit(chosen)
    assert chosen.drop_blocks == ORDER[:1]  # dropping it frees room for wider layers
    assert fit.flops(chosen) > fit.flops(shallow)
    assert fit.metrics(chosen)["memory_mb"] <= (1 - MEASURED_MARGIN) * 0.5 * baseline_mb


@pytest.mark.slow
def test_under_a_measured_limit_plans_come_most_flops_first(network) -> None:  # type: ignore[no-untyped-def]
    model, x, groups, blocks = network
    flops = count_flops_params(model, INPUT)[0]
    memory = (model_bytes(model) + peak_activation_bytes(model, INPUT, 1, x.device)) / MIB
    scores = {"attention": _scores("attention", groups, blocks, ORDER),
              "pls": _scores("pls", groups, blocks, list(reversed(ORDER)))}
    # Memory is measured (not counted) but exact, so the order is reproducible.
    target = target_ratio(Constraints(max_memory_ratio=0.6), {"flops": flops,
                                                              "memory_mb": memory})

    plans = seed_plans(model, x, groups, blocks, scores, target, round_to=4)

    kept = [_counts(model, plan, x)[0] for _, plan in plans]
    assert len(plans) >= 4 and kept == sorted(kept, reverse=True)
    assert {label.split("@")[0] for label, _ in plans} >= {"uniform", "global/magnitude"}


@pytest.mark.slow
def test_with_a_probe_measured_limits_rank_plans_by_its_loss(network) -> None:  # type: ignore[no-untyped-def]
    model, x, groups, blocks = network
    splits = load_dataset("digits", image_size=16, seed=0)
    flops = count_flops_params(model, INPUT)[0]
    memory = (model_bytes(model) + peak_activation_bytes(model, INPUT, 1, x.device)) / MIB
    scores = {"attention": _scores("attention", groups, blocks, ORDER)}
    target = target_ratio(Constraints(max_memory_ratio=0.6), {"flops": flops,
                                                              "memory_mb": memory})
    probe = PlanProbe(model, x, splits)

    plans = seed_plans(model, x, groups, blocks, scores, target, round_to=4, probe=probe)

    losses = [probe.loss(plan) for _, plan in plans]
    assert losses == sorted(losses)
    assert "probe" in {label.split("@")[0] for label, _ in plans}
    # Each shape gives its best depths, not one: the probe weighs depth against width poorly.
    depths: dict[str, set[int]] = {}
    for label, plan in plans:
        depths.setdefault(label, set()).add(len(plan.drop_blocks))
    assert max(Counter(label for label, _ in plans).values()) == PROBED_DEPTHS
    assert max(len(found) for found in depths.values()) == PROBED_DEPTHS
    counted = seed_plans(model, x, groups, blocks, scores, 0.5, round_to=4, probe=probe)
    assert counted == seed_plans(model, x, groups, blocks, scores, 0.5, round_to=4)


def _scripted(model: nn.Module, x: torch.Tensor, timings: list[float]) -> ScriptedTimer:
    """Timings for a real PlanFit (real pruning, real FLOPs) from a script."""
    return ScriptedTimer(model, INPUT, x.device, timings=list(timings))


@pytest.mark.parametrize(("timings", "fits", "left"), [
    ([1.05, 0.9], True, 0),   # one slow timing: timed again, the faster one stands
    ([1.05, 1.02], False, 0),  # slow twice: does not fit
    ([0.9, 5.0], True, 1),    # fits at once: timed once
    ([0.98, 0.5], True, 0),   # under the limit but not by the margin: timed again
    ([1.5, 0.5], False, 1),   # a far miss is not noise: not timed again
])
def test_a_plan_that_misses_only_on_latency_is_timed_once_more(  # type: ignore[no-untyped-def]
        network, timings, fits, left) -> None:
    model, x, groups, blocks = network
    timer = _scripted(model, x, timings)
    fit = PlanFit(model, x, [Limit("max_latency_ms", "latency_ms", 1.0)], timer=timer)
    plan = PrunePlan(drop_blocks=["layer1.0"])

    assert fit(plan) is fits
    assert len(timer.timings) == left
    assert fit(plan) is fits and len(timer.timings) == left  # memoised


def test_a_plan_that_also_breaks_a_counted_limit_is_not_timed_again(network) -> None:  # type: ignore[no-untyped-def]
    model, x, groups, blocks = network
    flops = count_flops_params(model, INPUT)[0]
    timer = _scripted(model, x, [1.05, 0.5])
    fit = PlanFit(model, x, [Limit("max_latency_ms", "latency_ms", 1.0),
                             Limit("max_flops", "flops", 0.1 * flops)], timer=timer)

    assert not fit(PrunePlan(drop_blocks=["layer1.0"]))
    assert timer.timings == [0.5]
