from __future__ import annotations

import optuna
import pytest

from models import PrunePlan, build_model, prunable_groups
from models.plan import apply_plan, removable_blocks
from search.space import DROP_PREFIX, KEEP_PREFIX, RATIO_PREFIX, SearchSpace
from tests.search_tests.conftest import make_spec


@pytest.fixture(scope="module")
def network():
    import torch

    model = build_model("cifar_resnet20")
    x = torch.zeros(1, 3, 16, 16)
    return model, x, prunable_groups(model, x), removable_blocks(model, x)


def test_per_layer_space_has_one_integer_per_group_and_one_flag_per_block(network) -> None:
    model, x, groups, blocks = network
    space = SearchSpace.from_spec(groups, blocks, make_spec().search)
    trial = optuna.trial.FixedTrial(space.params_for({}, []))
    keep, dropped = space.suggest(trial)
    assert keep == {g.name: g.channels for g in groups} and dropped == []
    params = space.params_for({}, [])
    assert sum(k.startswith(KEEP_PREFIX) for k in params) == len(groups)
    assert sum(k.startswith(DROP_PREFIX) for k in params) == len(blocks)


def test_keep_counts_are_on_round_to_steps_and_above_min_keep(network) -> None:
    _, _, groups, blocks = network
    spec = make_spec(search={"round_to": 4, "min_keep_ratio": 0.25})
    space = SearchSpace.from_spec(groups, blocks, spec.search)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        keep, dropped = space.suggest(study.ask())
        for group in groups:
            if group.block in dropped:  # not sampled: the block is gone
                assert group.name not in keep
                continue
            assert keep[group.name] % 4 == 0
            assert group.channels * 0.25 <= keep[group.name] <= group.channels


def test_params_for_inverts_suggest(network) -> None:
    model, x, groups, blocks = network
    space = SearchSpace.from_spec(groups, blocks, make_spec().search)
    plan = PrunePlan.uniform(groups, 0.5, round_to=4)
    keep = {g.name: plan.keep.get(g.name, g.channels) for g in groups}
    trial = optuna.trial.FixedTrial(space.params_for(keep, [blocks[0].name]))
    inside = {g.name for g in groups if g.block == blocks[0].name}
    assert space.suggest(trial) == ({name: count for name, count in keep.items()
                                     if name not in inside}, [blocks[0].name])


def test_block_removal_can_be_switched_off(network) -> None:
    _, _, groups, blocks = network
    space = SearchSpace.from_spec(groups, blocks,
                                  make_spec(search={"allow_block_removal": False}).search)
    assert space.blocks == [] and not any(k.startswith(DROP_PREFIX)
                                          for k in space.params_for({}, []))


def test_per_stage_space_shares_one_ratio_per_stage(network) -> None:
    model, x, groups, blocks = network
    space = SearchSpace.from_spec(groups, blocks, make_spec(search={"space": "per_stage"}).search)
    params = space.params_for({}, [])
    ratios = [k for k in params if k.startswith(RATIO_PREFIX)]
    assert 1 < len(ratios) < len(groups)
    params.update({name: 0.5 for name in ratios})
    keep, _ = space.suggest(optuna.trial.FixedTrial(params))
    pruned = apply_plan(build_model("cifar_resnet20"), PrunePlan(keep=keep), x)
    assert pruned(x).shape == (1, 10)
    for group in groups:
        assert keep[group.name] <= group.channels // 2 + space.round_to


@pytest.mark.parametrize("sampler, conditional", [("tpe", True), ("random", True),
                                                  ("gp", False), ("nsga2", False)])
def test_gp_and_nsga2_get_every_width_so_they_model_them(network, sampler: str,
                                                         conditional: bool) -> None:
    """GP and NSGA-II model only the intersection of the trials' spaces: in a conditional
    space with block drops every width would fall outside it and be drawn at random."""
    _, _, groups, blocks = network
    space = SearchSpace.from_spec(groups, blocks, make_spec(search={"sampler": sampler}).search)
    assert space.conditional is conditional
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    drops = []
    for _ in range(12):
        trial = study.ask()
        keep, dropped = space.suggest(trial)
        study.tell(trial, 0.0)
        drops.append(tuple(dropped))
        gone = {g.name for g in groups if g.block in dropped}
        assert gone.isdisjoint(keep) and set(keep) == {g.name for g in groups} - gone
    assert len(set(drops)) > 1
    modelled = optuna.search_space.intersection_search_space(study.get_trials())
    widths = {name for name in modelled if name.startswith(KEEP_PREFIX)}
    inside_blocks = {KEEP_PREFIX + g.name for g in groups if g.block in space.blocks}
    assert inside_blocks
    if conditional:
        assert widths.isdisjoint(inside_blocks)
    else:
        assert widths == {KEEP_PREFIX + g.name for g in groups}


def test_a_gp_study_proposes_other_plans_than_random_search_with_the_same_seed(network) -> None:
    """The failure this guards against: GP's trials equal to random search's, seed for seed."""
    _, _, groups, blocks = network
    plans = {}
    for sampler in ("gp", "random"):
        space = SearchSpace.from_spec(groups, blocks,
                                      make_spec(search={"sampler": sampler}).search)
        made = (optuna.samplers.GPSampler(seed=0, n_startup_trials=4) if sampler == "gp"
                else optuna.samplers.RandomSampler(seed=0))
        study = optuna.create_study(sampler=made)
        proposed = []
        for _ in range(7):
            trial = study.ask()
            keep, dropped = space.suggest(trial)
            study.tell(trial, -sum(keep.values()) / 100 - len(dropped))
            proposed.append((keep, dropped))
        plans[sampler] = proposed[4:]
    assert plans["gp"] != plans["random"]
    space = SearchSpace.from_spec(groups, blocks, make_spec(search={"sampler": "gp"}).search)
    plan = PrunePlan.uniform(groups, 0.5, round_to=4)
    keep = {g.name: plan.keep.get(g.name, g.channels) for g in groups}
    params = space.params_for(keep, [blocks[0].name])
    assert sum(name.startswith(KEEP_PREFIX) for name in params) == len(groups)
    inside = {g.name for g in groups if g.block == blocks[0].name}
    assert space.suggest(optuna.trial.FixedTrial(params)) == (
        {name: count for name, count in keep.items() if name not in inside}, [blocks[0].name])
