"""The first trials of every study: the plans a search starts from.

Under a hard limit, every plan is sized to the limit itself (``search.fitting``:
a plan that leaves budget unused is a weaker plan), and the plans differ in
SHAPE, so the search starts from several depth / width trade-offs instead of
one. In order:

* ``uniform``: no block dropped, the same share of every group;
* ``global/magnitude``: no block dropped, the widths Torch-Pruning's global L1
  magnitude pruning leaves (weak layers lose more);
* for each warm-start scorer, in the spec's order: ``method`` drops the least
  important blocks (by its scores; ``round(blocks * 0.5 * (1 - target))`` of
  them) and keeps the same share of every group;
* ``method/deep``: twice as many blocks dropped;
* ``method/wide``: no block dropped, widths follow the scorer's group ranks.

Under counted limits (FLOPs, parameters) the first two lead: they are the
strongest single plans on the search benchmark (``bench/search_quality.py``).
Under a measured limit (latency, memory) with a ``PlanProbe`` (what jobs use),
one more shape, ``probe``, drops blocks in the order a greedy elimination by the
adaptive-BatchNorm loss gives (``models.probe``), and that loss, not FLOPs,
orders the plans, best first, as the block choice matters more there than the
computation kept. Each shape then gives its plans at its ``PROBED_DEPTHS`` best
depths by that loss, not one: the loss ranks blocks well but weighs a trimmed
shallower plan against a full-width deeper one poorly (``bench/block_choice.py``).
Without a probe the plans are ordered by the FLOPs they keep, most first: they
all meet the limit, and the shapes that drop blocks keep more computation than
uniform or global widths. A trial's position matters when the budget is small.
The unpruned plan is left out: it breaks every limit, so it would spend a trial
on nothing. The latency seeding timed a plan with travels with it to its trial
(``seed_plans``, ``search.costs.LatencyCache``).

Without limits (``weighted`` and ``pareto`` modes) the plans are the scorers'
plans at a few FLOPs budgets and a uniform plan. The unpruned plan is not
enqueued there either: it is never delivered (``search.result``), so a trial of
it would spend one of ``n_trials`` on a plan the job cannot use, and the
baseline's measured accuracy and costs (the job's ``baseline``) are already the
reference every ratio and the job page compare with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from core.spec import Constraints, LatencySpec
from models.datasets import DataSplits
from models.importance import ImportanceScores
from models.measure import count_flops_params
from models.plan import BlockInfo, GroupInfo, PrunePlan
from models.probe import block_elimination_order, plan_loss
from search.constraints import Limit, active_limits
from search.costs import LatencyCache, LatencyTimer
from search.fitting import MEASURED_STEPS, PlanFit, fitted_plans
from search.warm_start import (
    FlopsCounter,
    global_magnitude_plan,
    uniform_plan_for_flops,
    warm_start_plans,
)

DEFAULT_TARGETS = (0.7, 0.5, 0.35)
#: Share of the removable blocks a plan drops at a budget of 0 (scaled by ``1 - target``).
DEPTH_SHARE = 0.5
#: ``/deep`` plans drop this many times more blocks.
DEEP_FACTOR = 2.0
#: Width spread of ``/wide`` plans (see ``search.warm_start``).
WIDE_SPREAD = 1.0
#: Where the global-magnitude plan goes among the plans of ``_shapes`` (after uniform).
GLOBAL_POSITION = 1
#: With a probe, each shape gives its plans at this many depths (the probe's best first).
PROBED_DEPTHS = 2
_RATIO_OF = {
    "max_flops": "flops", "max_latency_ms": "latency_ms", "max_params": "params",
    "max_memory_mb": "memory_mb",
}


@dataclass(frozen=True)
class SeedTarget:
    """What the warm-start plans must meet: the tightest limit as a fraction of the
    baseline (read as a FLOPs budget when shaping plans) and the limits themselves.

    Attributes:
        ratio: the tightest limit as a fraction of the baseline (at most 1).
        limits: the active limits in absolute units (``search.constraints``).
        batch_size: the batch latency and memory are measured at.
        baseline_latency_ms: the unpruned network's recorded latency; plans are then
            timed side by side with it, as trials are (``search.costs``).
        warmup, runs, runtime, threads, target: the job's latency timing settings
            (``LatencySpec``): plans are timed as its trials are.
    """

    ratio: float
    limits: tuple[Limit, ...]
    batch_size: int = 1
    baseline_latency_ms: float | None = None
    warmup: int = 5
    runs: int = 30
    runtime: str = "torch"
    threads: int | None = None
    target: str | None = None

    def timer(self, model: nn.Module, example_input: Tensor) -> LatencyTimer:
        """How plans of ``model`` are measured, on ``example_input``'s device."""
        return LatencyTimer(model, tuple(example_input.shape[1:]), example_input.device,
                            self.baseline_latency_ms, self.batch_size, self.warmup, self.runs,
                            self.runtime, self.threads, self.target)


def target_ratio(constraints: Constraints, baseline: Mapping[str, Any],
                 timing: LatencySpec | None = None) -> SeedTarget | None:
    """The tightest limit as a fraction of the baseline, with the limits (None without);
    latency is timed with ``timing``'s warm-up and runs (the defaults without)."""
    ratios = []
    for name, value in constraints.model_dump().items():
        if value is None:
            continue
        if name.endswith("_ratio"):
            ratios.append(value)
        else:
            ratios.append(value / float(baseline[_RATIO_OF[name]]))
    if not ratios:
        return None
    latency = baseline.get("latency_ms")
    timing = timing or LatencySpec()
    return SeedTarget(min(min(ratios), 1.0), tuple(active_limits(constraints, dict(baseline))),
                      int(baseline.get("batch_size", 1)),
                      float(latency) if latency is not None else None,
                      timing.warmup, timing.runs, timing.runtime, timing.threads,
                      timing.target)


def flops_targets(target: float | None) -> tuple[float, ...]:
    if target is None:
        return DEFAULT_TARGETS
    return tuple(max(0.02, target * factor) for factor in (1.0, 0.8, 0.6))


def _shapes(scores: Mapping[str, ImportanceScores], blocks: int, target: float,
            allow_block_removal: bool) -> list[tuple[str, ImportanceScores | None, int, float]]:
    """(label, scores, blocks dropped, spread) of every plan shape, best guesses first."""
    depth = round(blocks * DEPTH_SHARE * (1.0 - target)) if allow_block_removal else 0
    deep = min(blocks, round(depth * DEEP_FACTOR)) if allow_block_removal else 0
    shapes: list[tuple[str, ImportanceScores | None, int, float]] = [("uniform", None, 0, 0.0)]
    shapes += [(method, method_scores, depth, 0.0) for method, method_scores in scores.items()]
    shapes += [(f"{method}/deep", method_scores, deep, 0.0)
               for method, method_scores in scores.items() if deep > depth]
    shapes += [(f"{method}/wide", method_scores, 0, WIDE_SPREAD)
               for method, method_scores in scores.items()]
    return shapes


def _limited_plans(groups: Sequence[GroupInfo], blocks: Sequence[BlockInfo],
                   scores: Mapping[str, ImportanceScores], target: float, fits: PlanFit,
                   round_to: int, allow_block_removal: bool,
                   probe: PlanProbe | None = None) -> list[tuple[str, PrunePlan]]:
    rank = None
    if probe is not None and fits.measured:
        rank = _probe_rank(probe)
        if allow_block_removal and blocks:
            order = probe.block_order([block.name for block in blocks])
            scores = {**scores, "probe": ImportanceScores(
                "probe", {}, {group.name: 0.0 for group in groups},
                {name: float(position) for position, name in enumerate(order)}, 0.0)}
    plans: list[tuple[str, PrunePlan]] = []
    for label, method_scores, drops, spread in _shapes(scores, len(blocks), target,
                                                       allow_block_removal):
        shaped = fitted_plans(groups, blocks, fits, method_scores, drops, spread, round_to,
                              deepen=allow_block_removal, rank=rank)
        plans += [(f"{label}@{target:.2f}", plan)
                  for plan in shaped[:PROBED_DEPTHS if rank is not None else 1]]
    steps = {"steps": MEASURED_STEPS} if fits.measured else {}
    widest = global_magnitude_plan(fits.model, fits.example_input, groups, fits, round_to,
                                   **steps)
    if widest is not None:
        plans.insert(GLOBAL_POSITION, (f"global/magnitude@{target:.2f}", widest))
    if fits.measured:
        # Every plan meets the limit; the best guess is the one the probe rates best, else
        # the one keeping the most computation.
        plans.sort(key=lambda labelled: -(rank or fits.flops)(labelled[1]))
    return plans


class PlanProbe:
    """A training-free judge of plans (``models.probe``): the adaptive-BatchNorm loss of
    the pruned network on the calibration split, memoised by architecture, and the
    order a greedy elimination by that loss drops blocks in.

    Args:
        model: the unpruned network (never modified).
        example_input: a batch of its input shape.
        splits: the dataset; only its calibration split is read.
    """

    def __init__(self, model: nn.Module, example_input: Tensor, splits: DataSplits) -> None:
        self.model = model
        self.example_input = example_input
        self.splits = splits
        self._losses: dict[str, float] = {}

    def loss(self, plan: PrunePlan) -> float:
        key = plan.fingerprint()
        if key not in self._losses:
            self._losses[key] = plan_loss(self.model, plan, self.example_input, self.splits)
        return self._losses[key]

    def block_order(self, blocks: Sequence[str]) -> list[str]:
        return block_elimination_order(self.model, self.example_input, self.splits, blocks)


def _probe_rank(probe: PlanProbe) -> Callable[[PrunePlan], float]:
    return lambda plan: -probe.loss(plan)


def seed_plans(model: nn.Module, example_input: Tensor, groups: Sequence[GroupInfo],
               blocks: Sequence[BlockInfo], scores: Mapping[str, ImportanceScores],
               target: SeedTarget | float | None, round_to: int = 1,
               allow_block_removal: bool = True, probe: PlanProbe | None = None,
               measured: LatencyCache | None = None) -> list[tuple[str, PrunePlan]]:
    """Labelled plans to enqueue, best guesses first (see the module docstring).

    Args:
        model: the trained, unpruned network (not modified).
        example_input: a batch of its input shape, on the device trials run on.
        groups, blocks: the search space's groups and removable blocks.
        scores: method name -> its importance scores (the spec's ``warm_start``).
        target: ``target_ratio(...)``: the tightest limit as a fraction of the
            baseline, with the limits themselves; a plain number is a FLOPs
            budget (fraction of the baseline's); None without limits.
        round_to: channel multiple of partial keep counts.
        allow_block_removal: whether warm-start plans may drop blocks.
        probe: under a measured limit, adds the ``probe`` shape (blocks dropped in
            the probe's elimination order) and picks depths and orders plans by
            the probe's loss instead of by FLOPs. Ignored under counted limits.
        measured: when given, filled with the latency each plan was timed at side by
            side with the baseline (by network fingerprint), for the study's trials to
            reuse (``search.study.enqueue_plans`` shares it): a plan sized to the limit
            on one timing is then not lost to the next one.
    """
    if isinstance(target, float | int):
        baseline_flops = count_flops_params(model, tuple(example_input.shape[1:]))[0]
        target = SeedTarget(float(target),
                            (Limit("max_flops_ratio", "flops", float(target) * baseline_flops),))
    if target is not None:
        # Under counted limits alone, plans are sized by counting their widths
        # (``PlanFit(counted=True)``: milliseconds a check, where pruning a copy took
        # 0.1-0.3 s for ResNet-20 and made this most of a job's preparation), and the
        # plans settled on are confirmed on their pruned networks; should a count ever
        # differ, every plan is sized again on pruned networks.
        fits = PlanFit(model, example_input, target.limits,
                       timer=target.timer(model, example_input), counted=True)
        limited = _confirmed(lambda: _limited_plans(groups, blocks, scores, target.ratio, fits,
                                                    round_to, allow_block_removal, probe),
                             fits.confirm)
        if measured is not None:
            for _, plan in limited:
                latency = fits.latency(plan)
                if latency is not None:
                    measured.put(latency["arch_fingerprint"], latency)
        return limited
    counter = FlopsCounter(model, example_input, counted=True)
    return _confirmed(lambda: _budget_plans(model, example_input, groups, blocks, scores,
                                            flops_targets(target), round_to,
                                            allow_block_removal, counter),
                      counter.confirm)


def _confirmed(size: Callable[[], list[tuple[str, PrunePlan]]],
               confirm: Callable[[PrunePlan], bool]) -> list[tuple[str, PrunePlan]]:
    """The plans ``size`` gives, counted from their widths, once ``confirm`` agrees with
    each one's pruned network; else (``confirm`` then turned counting off) sized again."""
    plans = size()
    return plans if all(confirm(plan) for _, plan in plans) else size()


def _budget_plans(model: nn.Module, example_input: Tensor, groups: Sequence[GroupInfo],
                  blocks: Sequence[BlockInfo], scores: Mapping[str, ImportanceScores],
                  targets: Sequence[float], round_to: int, allow_block_removal: bool,
                  counter: FlopsCounter) -> list[tuple[str, PrunePlan]]:
    """Without limits: each scorer's plans at the FLOPs ``targets``, and a uniform plan."""
    plans: list[tuple[str, PrunePlan]] = []
    for method, method_scores in scores.items():
        for flops, plan in warm_start_plans(model, example_input, groups, blocks, method_scores,
                                            flops_targets=targets, round_to=round_to,
                                            allow_block_removal=allow_block_removal,
                                            counter=counter):
            plans.append((f"{method}@{flops:.2f}", plan))
    uniform = uniform_plan_for_flops(model, example_input, groups, targets[0], round_to,
                                     counter=counter)
    if uniform is not None:
        plans.append((f"uniform@{targets[0]:.2f}", uniform))
    return plans
