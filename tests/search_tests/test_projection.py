"""Budget-projected sampling: plans over a counted limit are scaled onto it, and the widths
of groups inside dropped blocks are not sampled."""

from __future__ import annotations

import copy
import random

import optuna
import pytest
import torch
from optuna.trial import TrialState

from models import build_model, prunable_groups
from models.measure import count_flops_params
from models.plan import PrunePlan, apply_plan, removable_blocks
from search.constraints import Limit
from search.projection import PlanProjection
from search.space import DROP_PREFIX, KEEP_PREFIX, SearchSpace
from search.study import enqueue_plans
from tests.search_tests.conftest import make_spec
from tests.support.networks import ScaledNet, unwrapped_scale_warning

ROUND_TO = 8


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    model = build_model("cifar_resnet20")
    x = torch.zeros(1, 3, 16, 16)
    groups = prunable_groups(model, x, round_to=ROUND_TO)
    blocks = removable_blocks(model, x)
    space = SearchSpace.from_spec(groups, blocks, make_spec().search, round_to=ROUND_TO)
    return model, x, space


def _counts(model, x, plan: PrunePlan) -> tuple[int, int]:
    return count_flops_params(apply_plan(copy.deepcopy(model), plan, x), (3, 16, 16))


def _on_the_grid(space: SearchSpace, plan: PrunePlan) -> bool:
    ranges = {group.name: group for group in space.groups}
    return all(count == ranges[name].channels
               or (count % ROUND_TO == 0 and count >= ranges[name].low)
               for name, count in plan.keep.items())


def test_a_plan_over_a_flops_limit_is_scaled_onto_it_on_the_grid(network) -> None:
    model, x, space = network
    flops, _ = count_flops_params(model, (3, 16, 16))
    limit = 0.4 * flops
    projection = PlanProjection(model, x, [Limit("max_flops_ratio", "flops", limit)], space)
    wide = space.to_plan({g.name: g.channels - ROUND_TO for g in space.groups}, ["layer3.2"])
    assert _counts(model, x, wide)[0] > limit

    projected = projection(wide)
    assert projected is not wide and _on_the_grid(space, projected)
    assert projected.drop_blocks == ["layer3.2"] and "layer3.2.conv1" not in projected.keep
    assert all(projected.keep.get(name, 10**6) <= count for name, count in wide.keep.items())
    kept = _counts(model, x, projected)[0]
    # On the limit, not far under it: one grid step more of the widest group breaks it.
    assert 0.75 * limit < kept <= limit
    # A plan that already fits is left alone, the same object.
    assert projection(projected) is projected


def test_a_params_limit_is_projected_and_a_latency_limit_is_not(network) -> None:
    model, x, space = network
    _, params = count_flops_params(model, (3, 16, 16))
    unpruned = PrunePlan.unpruned()
    projected = PlanProjection(
        model, x, [Limit("max_params_ratio", "params", 0.3 * params)], space)(unpruned)
    assert projected.keep and _counts(model, x, projected)[1] <= 0.3 * params
    timed_only = PlanProjection(model, x, [Limit("max_latency_ms", "latency_ms", 1e-9)], space)
    assert timed_only(unpruned) is unpruned


def test_a_limit_no_scaling_reaches_leaves_the_plan_as_sampled(network) -> None:
    model, x, space = network
    projection = PlanProjection(model, x, [Limit("max_params", "params", 10.0)], space)
    plan = space.to_plan({space.groups[0].name: 8}, [])
    assert projection(plan) is plan


def test_a_plan_under_counted_limits_is_widened_onto_them_when_only_accuracy_counts(
        network) -> None:
    model, x, space = network
    flops, params = count_flops_params(model, (3, 16, 16))
    limits = [Limit("max_flops_ratio", "flops", 0.5 * flops),
              Limit("max_params_ratio", "params", 0.6 * params)]
    narrow = space.to_plan({g.name: max(g.low, ROUND_TO) for g in space.groups}, ["layer2.2"])
    assert _counts(model, x, narrow)[0] < 0.3 * flops

    widened = PlanProjection(model, x, limits, space, accuracy_only=True)(narrow)
    assert widened is not narrow and _on_the_grid(space, widened)
    assert widened.drop_blocks == ["layer2.2"]
    assert all(widened.keep.get(name, 10**6) >= count for name, count in narrow.keep.items())
    kept_flops, kept_params = _counts(model, x, widened)
    assert kept_flops <= 0.5 * flops and kept_params <= 0.6 * params
    # On a limit, not far under both: the plan spends the budget the job gave it.
    assert kept_flops > 0.42 * flops or kept_params > 0.5 * params
    # A plan every group of which is at full width has nothing to widen.
    shallow = space.to_plan({}, [b for b in space.blocks][:6])
    assert PlanProjection(model, x, limits, space, accuracy_only=True)(shallow) is shallow


@pytest.mark.parametrize("share", [0.2, 0.22, 0.35])
def test_a_plan_its_factor_cannot_take_onto_the_limit_is_filled_onto_it(network, share) -> None:
    model, x, space = network
    flops, _ = count_flops_params(model, (3, 16, 16))
    # Half of every stage-1 and stage-2 width, three quarters of stage 3: on a grid of 8,
    # one factor for all moves stage 3 first and then every stage-2 group at once.
    shares = {16: 8, 32: 16, 64: 48}
    plan = space.to_plan({g.name: shares[g.channels] for g in space.groups},
                         ["layer1.1", "layer3.2"])
    limit = share * flops
    projected = PlanProjection(model, x, [Limit("max_flops_ratio", "flops", limit)], space,
                               accuracy_only=True)(plan)
    assert _on_the_grid(space, projected) and projected.drop_blocks == plan.drop_blocks
    kept = _counts(model, x, projected)[0]
    # One factor alone left 0.158 of the FLOPs under 0.2 and 0.22, 0.29 under 0.35.
    assert 0.95 * limit < kept <= limit


def test_nothing_is_widened_when_costs_count_or_a_limit_is_timed(network) -> None:
    model, x, space = network
    flops, _ = count_flops_params(model, (3, 16, 16))
    narrow = space.to_plan({g.name: max(g.low, ROUND_TO) for g in space.groups}, [])
    counted = [Limit("max_flops_ratio", "flops", 0.5 * flops)]
    # weighted and pareto modes: a smaller network is worth something of its own.
    assert PlanProjection(model, x, counted, space)(narrow) is narrow
    # A latency limit: a wider plan may break it, and only a timing would tell.
    timed = [*counted, Limit("max_latency_ms", "latency_ms", 1e9)]
    assert PlanProjection(model, x, timed, space, accuracy_only=True)(narrow) is narrow


def test_groups_inside_a_dropped_block_are_not_sampled(network) -> None:
    _, _, space = network
    inside = [group.name for group in space.groups if group.block == "layer2.1"]
    assert inside == ["layer2.1.conv1"]
    params = space.params_for({}, ["layer2.1"])
    # No width for the dropped block's group; asking for it would fail a FixedTrial.
    assert KEEP_PREFIX + "layer2.1.conv1" not in params
    assert params[DROP_PREFIX + "layer2.1"] is True
    keep, dropped = space.suggest(optuna.trial.FixedTrial(params))
    assert dropped == ["layer2.1"] and "layer2.1.conv1" not in keep

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    study.optimize(lambda trial: float(len(space.suggest(trial)[1])), n_trials=30)
    blocks = {group.name: group.block for group in space.groups}
    for trial in study.trials:
        for name in trial.params:
            if name.startswith(KEEP_PREFIX):
                block = blocks[name.removeprefix(KEEP_PREFIX)]
                assert block is None or not trial.params[DROP_PREFIX + block]
    assert any(len(trial.params) < len(space.params_for({}, [])) for trial in study.trials)


def test_a_plan_that_drops_blocks_is_enqueued_without_their_widths(network) -> None:
    _, _, space = network
    plan = PrunePlan(keep={"layer3.0.conv1": 32}, drop_blocks=["layer1.1", "layer3.1"],
                     round_to=ROUND_TO)
    study = optuna.create_study()
    enqueue_plans(study, space, [("deep", plan)])
    study.optimize(lambda trial: float(len(space.suggest(trial)[0])), n_trials=1)
    [trial] = study.get_trials(states=(TrialState.COMPLETE,))
    assert trial.user_attrs["warm_start"] == "deep"
    assert space.to_plan(*space.suggest(optuna.trial.FixedTrial(trial.params))) == plan


@pytest.mark.parametrize("accuracy_only", [True, False])
def test_counting_plans_from_their_widths_projects_them_as_pruning_them_does(
        network, accuracy_only) -> None:
    """The projection's checks count plans from their widths (``models.plan_count``):
    the plans it gives are those it gave when every check pruned and counted a copy."""
    model, x, space = network
    flops, params = count_flops_params(model, (3, 16, 16))
    rng = random.Random(1)
    plans = [space.to_plan({g.name: rng.choice(range(ROUND_TO, g.channels + 1, ROUND_TO))
                            for g in space.groups},
                           [b for b in space.blocks if rng.random() < 0.3]) for _ in range(4)]
    for limits in ([Limit("max_flops_ratio", "flops", 0.25 * flops)],
                   [Limit("max_flops_ratio", "flops", 0.5 * flops),
                    Limit("max_params_ratio", "params", 0.4 * params)]):
        counted = PlanProjection(model, x, limits, space, accuracy_only=accuracy_only)
        pruned = PlanProjection(model, x, limits, space, accuracy_only=accuracy_only,
                                counted=False)
        assert counted.fits is not None and counted.fits.counts is not None
        for plan in plans:
            assert counted(plan).fingerprint() == pruned(plan).fingerprint()
        assert counted.fits.counts.counting  # every count was confirmed


@unwrapped_scale_warning
def test_a_plan_counted_wrong_from_its_widths_is_projected_on_pruned_networks() -> None:
    """A layer the count does not model (``tests/models_tests/test_plan_count.py``): the
    projected plan is confirmed on its pruned network, the difference seen, and the
    projection made again with every check pruning a copy."""
    torch.manual_seed(0)
    model, x = ScaledNet(), torch.zeros(1, 3, 8, 8)
    groups = prunable_groups(model, x, round_to=4)
    space = SearchSpace.from_spec(groups, [], make_spec().search, round_to=4)
    _, params = count_flops_params(model, (3, 8, 8))
    limits = [Limit("max_params_ratio", "params", 0.5 * params)]
    plan = space.to_plan({}, [])
    counted = PlanProjection(model, x, limits, space, accuracy_only=True)
    projected = counted(plan)
    assert counted.fits is not None and counted.fits.counts is not None
    assert not counted.fits.counts.counting
    assert projected.fingerprint() == PlanProjection(
        model, x, limits, space, accuracy_only=True, counted=False)(plan).fingerprint()
    assert count_flops_params(apply_plan(copy.deepcopy(model), projected, x), (3, 8, 8))[1] \
        <= 0.5 * params
