"""Warm-start plans: prune plans derived from importance scores at several FLOPs budgets.

These are the first trials of every study (``study.enqueue_trial``), so the
search starts from sensible regions instead of random ones.

From one scorer's results, a plan for a budget (a fraction of the baseline
MACs) is made in two steps:

1. Blocks (when allowed): the least important removable blocks are dropped
   first, in score order, at most ``block_share`` of them scaled by how hard
   the budget is (``round(len(blocks) * block_share * (1 - target))``), and
   only while the network stays above the budget; channel pruning does the rest.
2. Channels: group ``g`` keeps ``t ** (1 + spread * (0.5 - z_g))`` of its
   channels, where ``z_g`` in [0, 1] is the group's importance rank (0 = least
   important) and ``t`` in (0, 1] is one global knob. Less important groups
   lose more channels (with the default ``spread = 1`` the least important
   keeps ``t ** 1.5``, the most important ``t ** 0.5``). ``t`` is found by
   bisection as the largest value whose plan fits the budget: its MACs counted from
   its widths (``models.plan_count``) with ``FlopsCounter(counted=True)``, which the
   caller confirms on the plans' pruned networks (``FlopsCounter.confirm``), or
   counted on each plan's pruned network (``models.measure.count_flops_params``).

Ranks rather than raw scores: scorers differ in scale and outliers (one
useless group would squash every other group's normalised score together).

Every returned plan meets its budget and respects each group's ``min_keep``
and ``round_to``; a budget no plan can reach is left out (and logged).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from functools import partial

import torch_pruning as tp
from torch import Tensor, nn

from models.groups import final_classifier
from models.importance import ImportanceScores
from models.measure import count_flops_params
from models.plan import BlockInfo, GroupInfo, PrunePlan
from models.plan_count import PlanCosts

__all__ = ["FlopsCounter", "PlanCheck", "global_magnitude_plan", "global_magnitude_pruner",
           "global_magnitude_schedule", "largest_fitting", "shaped_plan",
           "uniform_plan_for_flops", "warm_start_plans"]

logger = logging.getLogger(__name__)

#: Bisection steps on the global knob; channel counts are integers, so this is plenty.
BISECTION_STEPS = 14
#: Steps of Torch-Pruning's iterative global pruning from nothing pruned to the floors.
GLOBAL_STEPS = 40


class FlopsCounter:
    """MACs of ``model`` pruned by a plan, memoised by plan (``models.plan_count.PlanCosts``).

    Args:
        model: the unpruned network (never modified: each plan prunes a copy).
        example_input: a batch of the network's input shape.
        counted: count MACs from the plans' widths (``models.plan_count``: milliseconds,
            where pruning a copy takes 0.1-0.3 s for a ResNet-20); the caller confirms the
            plans it settles on (``confirm``).
    """

    def __init__(self, model: nn.Module, example_input: Tensor, counted: bool = False) -> None:
        self.model = model
        self.example_input = example_input
        self.input_shape = tuple(example_input.shape[1:])
        self.baseline = count_flops_params(model, self.input_shape)[0]
        self.costs = PlanCosts(model, example_input, counted)

    def __call__(self, plan: PrunePlan) -> int:
        return self.baseline if plan.is_unpruned() else self.costs(plan)[0]

    def confirm(self, plan: PrunePlan) -> bool:
        """Whether ``plan``'s count is its pruned network's (``PlanCosts.confirm``: when it
        is not, every plan is pruned and counted from then on)."""
        return plan.is_unpruned() or self.costs.confirm(plan)


def _floor(group: GroupInfo, round_to: int) -> int:
    """The fewest channels the group may keep: its ``min_keep`` as a multiple of ``round_to``."""
    floor = max(1, group.min_keep, round_to)
    return min(group.channels, math.ceil(floor / round_to) * round_to)


def _count(group: GroupInfo, ratio: float, round_to: int) -> int:
    wanted = round(group.channels * ratio / round_to) * round_to
    return min(group.channels, max(_floor(group, round_to), wanted))


#: A plan check: does the plan's pruned network meet the limits?
PlanCheck = Callable[[PrunePlan], bool]


def largest_fitting(make_plan: Callable[[float], PrunePlan], fits: PlanCheck,
                    steps: int = BISECTION_STEPS) -> PrunePlan | None:
    """The plan of the largest knob in (0, 1] that ``fits``, found by bisection, or None.

    Args:
        make_plan: knob -> plan; a larger knob keeps more channels.
        fits: whether a plan meets the limits.
        steps: bisection steps after checking both ends.
    """
    top = make_plan(1.0)
    if fits(top):
        return top
    smallest = make_plan(1e-6)
    if not fits(smallest):
        return None
    low, high, best = 0.0, 1.0, smallest
    for _ in range(steps):
        middle = (low + high) / 2
        plan = make_plan(middle)
        if fits(plan):
            low, best = middle, plan
        else:
            high = middle
    return best


def _bisect(make_plan: Callable[[float], PrunePlan], flops: Callable[[PrunePlan], int],
            budget: float) -> PrunePlan | None:
    """The plan of the largest knob in (0, 1] that fits ``budget`` MACs, or None."""
    return largest_fitting(make_plan, lambda plan: flops(plan) <= budget)


def uniform_plan_for_flops(model: nn.Module, example_input: Tensor, groups: Sequence[GroupInfo],
                           target: float, round_to: int = 1,
                           counter: FlopsCounter | None = None) -> PrunePlan | None:
    """The uniform plan (same keep ratio everywhere) with the most channels within a budget.

    Args:
        model: the unpruned network (not modified).
        example_input: a batch of its input shape.
        groups: the prunable groups (``models.plan.prunable_groups``).
        target: budget as a fraction of the baseline MACs, in (0, 1].
        round_to: channel multiple of every partial keep count.
        counter: a ``FlopsCounter`` to share between calls (one is made when None).

    Returns:
        The plan, or None when even the smallest uniform plan exceeds the budget.
    """
    counter = counter or FlopsCounter(model, example_input)
    budget = target * counter.baseline
    return shaped_plan(groups, [], lambda plan: counter(plan) <= budget, round_to=round_to)


def _ranks(names: Sequence[str], scores: dict[str, float]) -> dict[str, float]:
    """Importance rank in [0, 1] (0 = least important); ties share the mean rank."""
    if len(names) <= 1:
        return {name: 1.0 for name in names}
    ordered = sorted(names, key=lambda name: scores.get(name, 0.0))
    positions: dict[float, list[int]] = {}
    for position, name in enumerate(ordered):
        positions.setdefault(scores.get(name, 0.0), []).append(position)
    return {name: sum(positions[scores.get(name, 0.0)])
            / len(positions[scores.get(name, 0.0)]) / (len(names) - 1) for name in names}


def _ranked_plan(groups: Sequence[GroupInfo], ranks: dict[str, float], knob: float,
                 dropped: Sequence[str], spread: float, round_to: int) -> PrunePlan:
    """Group ``g`` keeps ``knob ** (1 + spread * (0.5 - rank_g))`` of its channels; groups
    inside dropped blocks are not listed."""
    keep: dict[str, int] = {}
    for group in groups:
        if group.block is not None and group.block in dropped:
            continue
        count = _count(group, knob ** (1.0 + spread * (0.5 - ranks[group.name])), round_to)
        if count < group.channels:
            keep[group.name] = count
    return PrunePlan(keep=keep, drop_blocks=list(dropped), round_to=round_to)


def shaped_plan(groups: Sequence[GroupInfo], blocks: Sequence[BlockInfo], fits: PlanCheck,
                scores: ImportanceScores | None = None, drops: int = 0, spread: float = 0.0,
                round_to: int = 1, steps: int = BISECTION_STEPS) -> PrunePlan | None:
    """The widest plan of one shape that ``fits``: depth given, widths bisected.

    The shape: the ``drops`` least important removable blocks (by ``scores``) are
    dropped, and group ``g`` keeps ``t ** (1 + spread * (0.5 - z_g))`` of its channels
    (``z_g`` its importance rank, see the module docstring); ``t`` is bisected to the
    largest value whose plan fits. Without scores (or with ``spread = 0``) every
    group keeps the same share.

    Args:
        groups: the prunable groups.
        blocks: the removable blocks the plan may drop.
        fits: whether a plan meets the limits (e.g. a FLOPs budget, or measured latency).
        scores: importance scores ranking groups and blocks; None = uniform, no drops.
        drops: how many blocks to drop (at most ``len(blocks)``).
        spread: how much more the least important group loses (0 = uniform widths).
        round_to: channel multiple of every partial keep count.
        steps: bisection steps on ``t``.

    Returns:
        The plan, or None when even the narrowest plan of this shape does not fit.
    """
    if scores is None:
        ranks = {group.name: 0.5 for group in groups}
        dropped: list[str] = []
    else:
        ranks = _ranks([group.name for group in groups], scores.group)
        order = sorted(blocks, key=lambda block: scores.block.get(block.name, 0.0))
        dropped = [block.name for block in order[:max(0, drops)]]
    return largest_fitting(
        lambda knob: _ranked_plan(groups, ranks, knob, dropped, spread, round_to), fits, steps)


def global_magnitude_pruner(model: nn.Module, example_input: Tensor, ratio: float,
                            steps: int, round_to: int = 1) -> tp.pruner.BasePruner:
    """Torch-Pruning's global magnitude pruning of ``model`` (in place), stepped.

    ``BasePruner(global_pruning=True)`` with ``GroupMagnitudeImportance``: each
    ``step()`` ranks the channels of all groups together; the pruning ratio rises
    linearly to ``ratio`` over ``steps`` steps, and ``max_pruning_ratio`` stops a group
    at ``ratio``. The final classifier keeps its outputs.
    """
    classifier = final_classifier(model)
    return tp.pruner.BasePruner(
        model, example_input, importance=tp.importance.GroupMagnitudeImportance(),
        global_pruning=True, pruning_ratio=ratio, max_pruning_ratio=ratio,
        iterative_steps=steps,
        ignored_layers=[classifier] if classifier is not None else [], round_to=round_to)


def global_magnitude_schedule(model: nn.Module, example_input: Tensor,
                              groups: Sequence[GroupInfo], round_to: int = 1,
                              steps: int = GLOBAL_STEPS) -> list[dict[str, int]]:
    """The widths Torch-Pruning's global magnitude pruning leaves after each of its steps.

    ``global_magnitude_pruner`` stepped down to the groups' lowest floor: the channels
    of all groups are ranked together, so layers with weak filters lose more (the
    classic global L1 baseline). Stepped, as Torch-Pruning's own benchmarks prune to a
    MACs target: one step at a high ratio is not monotone (on a trained ResNet-20 with
    channel multiple 8, ratio 0.4 leaves 33% of the MACs and ratio 0.75 leaves 52%, since
    a group whose channels all fall under the global threshold is skipped whole), while
    every step only removes channels, so no width grows along the schedule. The model
    is not modified (a copy is pruned).

    Returns:
        ``steps + 1`` width maps, group name -> channels kept: before the first step
        (nothing pruned), then after each step.
    """
    pruned = copy.deepcopy(model).eval()
    floor = min((group.min_keep / group.channels for group in groups), default=0.0)
    pruner = global_magnitude_pruner(pruned, example_input, max(0.0, 1.0 - floor), steps,
                                     round_to)
    modules = dict(pruned.named_modules())

    def widths() -> dict[str, int]:
        return {group.name: int(modules[group.name].out_channels) for group in groups}

    schedule = [widths()]
    for _ in range(steps):
        pruner.step()
        schedule.append(widths())
    return schedule


def global_magnitude_plan(model: nn.Module, example_input: Tensor,
                          groups: Sequence[GroupInfo], fits: PlanCheck, round_to: int = 1,
                          steps: int = BISECTION_STEPS) -> PrunePlan | None:
    """The widest plan along Torch-Pruning's stepped global magnitude pruning
    (``global_magnitude_schedule``) that ``fits``, or None when even its last step does not.

    Keep counts are clamped to each group's floor, so the plan stays in the search space.
    The schedule's widths only shrink, so bisection over its steps finds the widest fit.
    """
    schedule = global_magnitude_schedule(model, example_input, groups, round_to)

    def make_plan(knob: float) -> PrunePlan:
        widths = schedule[round((1.0 - knob) * (len(schedule) - 1))]
        keep = {group.name: max(_floor(group, round_to), widths[group.name]) for group in groups
                if widths[group.name] < group.channels}
        return PrunePlan(keep=keep, round_to=round_to)

    return largest_fitting(make_plan, fits, steps)


def _blocks_to_drop(blocks: Sequence[BlockInfo], scores: ImportanceScores, target: float,
                    block_share: float, base_plan: Callable[[list[str]], PrunePlan],
                    flops: Callable[[PrunePlan], int], budget: float) -> list[str]:
    limit = round(len(blocks) * block_share * (1.0 - target))
    dropped: list[str] = []
    for block in sorted(blocks, key=lambda b: scores.block.get(b.name, 0.0)):
        if len(dropped) >= limit:
            break
        candidate = [*dropped, block.name]
        if flops(base_plan(candidate)) < budget:
            continue
        dropped = candidate
    return dropped


def warm_start_plans(model: nn.Module, example_input: Tensor, groups: Sequence[GroupInfo],
                     blocks: Sequence[BlockInfo], scores: ImportanceScores,
                     flops_targets: Sequence[float] = (0.7, 0.5, 0.35), round_to: int = 1,
                     allow_block_removal: bool = True, block_share: float = 0.5,
                     spread: float = 1.0,
                     counter: FlopsCounter | None = None) -> list[tuple[float, PrunePlan]]:
    """Plans derived from importance scores, one per FLOPs budget (see the module docstring).

    Args:
        model: the unpruned network the scores describe (not modified).
        example_input: a batch of its input shape.
        groups: the prunable groups (``models.plan.prunable_groups``).
        blocks: the removable blocks (``models.plan.removable_blocks``).
        scores: one scorer's results (``models.importance.score``).
        flops_targets: budgets as fractions of the baseline MACs, each in (0, 1].
        round_to: channel multiple of every partial keep count.
        allow_block_removal: whether plans may drop blocks.
        block_share: the most blocks a plan drops, as a share of the removable
            blocks, at a budget of 0 (scaled by ``1 - target``).
        spread: how much more the least important group loses than the most
            important: keep ratios are ``t ** (1 + spread * (0.5 - z))``; 0 is uniform.
        counter: a ``FlopsCounter`` to share between calls (one is made when None).

    Returns:
        (target, plan) pairs in the order of ``flops_targets``; every plan's
        pruned network has at most ``target`` times the baseline MACs.
    """
    counter = counter or FlopsCounter(model, example_input)
    ranks = _ranks([g.name for g in groups], scores.group)

    def plan_for(knob: float, dropped: list[str]) -> PrunePlan:
        return _ranked_plan(groups, ranks, knob, dropped, spread, round_to)

    plans: list[tuple[float, PrunePlan]] = []
    for target in flops_targets:
        budget = target * counter.baseline
        dropped: list[str] = []
        if allow_block_removal and blocks:
            dropped = _blocks_to_drop(blocks, scores, target, block_share,
                                      lambda names: plan_for(1.0, names), counter, budget)
        plan = _bisect(partial(plan_for, dropped=dropped), counter, budget)
        if plan is None:
            logger.warning("no %s warm-start plan reaches %.0f%% of the baseline MACs; skipped",
                           scores.method, 100 * target)
            continue
        plans.append((float(target), plan))
    return plans
