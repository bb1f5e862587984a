"""The one-shot rows of ``bench/search_quality.py``: one plan at the target, (e) uniform
L1 magnitude (``PrunePlan.uniform``) or (f) Torch-Pruning's global magnitude ranking
(``search.warm_start.global_magnitude_pruner``: ``BasePruner(global_pruning=True)``,
``GroupMagnitudeImportance``, stepped until the target is met as Torch-Pruning's
benchmarks do), the largest ratio (the fewest steps) that meets the target as measured
(FLOPs, or CPU latency timed side by side with the baseline until the ratio is stable:
the final timing a search row's delivered plan passes, ``search.final_timing.FinalTimer``),
fine-tuned for the whole budget of a search row (search + final steps).
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _search_rows import ONE_SHOTS, TARGETS, Setup, final_tune, make_spec
from torch import nn

from core.spec import JobSpec
from core.trial import is_feasible
from models.measure import measure_model
from models.plan import PrunePlan, apply_plan
from search.constraints import active_limits, violations
from search.final_timing import FinalTimer
from search.warm_start import global_magnitude_pruner

Costs = Callable[[nn.Module], dict[str, float]]
#: Steps of the (f) row's global pruning from nothing pruned to the floors.
GLOBAL_STEPS = 100


def _cost_meter(setup: Setup, spec: JobSpec, timer: FinalTimer) -> Costs:
    """FLOPs and latency ratios and feasibility of a pruned network. Its latency is the
    final timing a search row's delivered plan passes (``FinalTimer.network``: side by
    side with the unpruned network, rounds until the ratio is stable, the slower of the
    median and fastest-pass ratios): one short timing per knob of a scan would take the
    first knob that a noisy timing let under a latency limit."""
    device = setup.profile.device
    limits = active_limits(spec.objective.constraints, setup.baseline)

    def costs(model: nn.Module) -> dict[str, float]:
        cost = measure_model(model, setup.splits.input_shape, device, spec.latency.batch_size,
                             0, 1).to_dict()
        cost["flops"] = cost["macs"]
        cost.update(timer.network(model, lambda latency: not is_feasible(
            violations(limits, {**cost, **latency}))))
        return {"flops": cost["flops"] / setup.baseline["flops"],
                "latency": cost["latency_ms"] / setup.baseline["latency_ms"],
                "feasible": float(is_feasible(violations(limits, cost)))}

    return costs


def _largest_fitting(prune: Callable[[float], nn.Module], costs: Costs,
                     low: float, high: float, grid: float = 0.05,
                     steps: int = 5) -> tuple[nn.Module, dict[str, float]] | None:
    """The pruned network of the largest knob in [low, high] that meets the spec's limits
    as measured, with its measured costs: scan down a grid, then bisect between the first
    fit and the grid point above it (Torch-Pruning's global pruning is not monotone in its
    ratio near the extremes, so a plain bisection over the whole range can miss)."""
    knobs = [high - index * grid for index in range(int((high - low) / grid) + 1)]
    for upper, knob in zip([None, *knobs], knobs, strict=False):
        candidate = prune(knob)
        measured = costs(candidate)
        if not measured["feasible"]:
            continue
        best, low = (candidate, measured), knob
        if upper is None:
            return best
        high = upper
        for _ in range(steps):
            middle = (low + high) / 2
            candidate = prune(middle)
            measured = costs(candidate)
            if measured["feasible"]:
                low, best = middle, (candidate, measured)
            else:
                high = middle
        return best
    return None


def _pruner(setup: Setup, spec: JobSpec, row: str) -> Callable[[float], nn.Module]:
    example = setup.splits.example_input().to(setup.profile.device)
    round_to = setup.round_to()

    def uniform(keep_ratio: float) -> nn.Module:
        plan = PrunePlan.uniform(setup.groups, keep_ratio, round_to,
                                 spec.search.min_keep_ratio)
        return apply_plan(copy.deepcopy(setup.model), plan, example)

    def global_magnitude(keep_ratio: float) -> nn.Module:
        # Stepped as Torch-Pruning's benchmarks prune to a MACs target: its pruning ratio
        # rises over GLOBAL_STEPS steps and this knob stops it after its share of them.
        # One step at a high ratio is not monotone (a group whose channels all fall under
        # the global threshold is skipped whole: on the cpu-lean baseline no one-step
        # ratio reached 25% of the MACs); steps only remove channels.
        model = copy.deepcopy(setup.model).eval()
        ratio = 1.0 - spec.search.min_keep_ratio
        pruner = global_magnitude_pruner(model, example, ratio, GLOBAL_STEPS, round_to)
        for _ in range(round((1.0 - keep_ratio) / ratio * GLOBAL_STEPS)):
            pruner.step()
        return model

    return uniform if row == ONE_SHOTS[0] else global_magnitude


def run_one_shot(setup: Setup, row: str, target: int, seeds: tuple[int, ...],
                 log: Callable[[str], None]) -> list[dict[str, Any]]:
    """One plan at the target (the largest knob that meets it as measured), fine-tuned
    for the whole budget (search + final steps) once per seed."""
    started = time.perf_counter()
    profile = setup.profile
    spec = make_spec(profile, TARGETS[target][1], "tpe", None, 0)
    with tempfile.TemporaryDirectory() as scratch:
        timer = FinalTimer(spec, setup.model, setup.splits.input_shape, profile.device,
                           float(setup.baseline["latency_ms"]), Path(scratch))
        found = _largest_fitting(_pruner(setup, spec, row), _cost_meter(setup, spec, timer),
                                 spec.search.min_keep_ratio, 1.0)
    steps = profile.search_steps + profile.final_steps
    if found is None:
        log(f"{row} {TARGETS[target][0]}: no knob meets the target")
        return [{"row": row, "target": target, "seed": seed, "test": None, "trial_steps": 0,
                 "rerank_steps": 0, "final_steps": 0, "seconds": 0.0} for seed in seeds]
    model, measured = found
    scanned = time.perf_counter() - started
    outcomes = []
    for seed in seeds:
        began = time.perf_counter()
        test = final_tune(setup, copy.deepcopy(model), steps, seed)
        outcomes.append({"row": row, "target": target, "seed": seed, "test": test,
                         "trial_steps": 0, "rerank_steps": 0, "final_steps": steps,
                         "flops": measured["flops"], "latency": measured["latency"], "dropped": 0,
                         "seconds": scanned / len(seeds) + time.perf_counter() - began})
    return outcomes
