"""The one-shot rows of ``bench/search_quality.py``: one plan at the target, (e) uniform
L1 magnitude (``PrunePlan.uniform``) or (f) Torch-Pruning's global magnitude ranking
(``BasePruner(global_pruning=True)``, ``GroupMagnitudeImportance``), the largest ratio
that meets the target as measured (FLOPs, or CPU latency timed side by side with the
baseline), fine-tuned for the whole budget of a search row (search + final steps).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch_pruning as tp
from _search_rows import ONE_SHOTS, TARGETS, Setup, final_tune, make_spec
from torch import nn

from core.spec import JobSpec
from core.trial import is_feasible
from models.groups import final_classifier
from models.latency import latency_against
from models.measure import measure_model
from models.plan import PrunePlan, apply_plan
from search.constraints import active_limits, violations


def _costs(setup: Setup, model: nn.Module, spec: JobSpec) -> dict[str, float]:
    """FLOPs and latency ratios (latency side by side with the baseline) and feasibility."""
    device = setup.profile.device
    cost = measure_model(model, setup.splits.input_shape, device, spec.latency.batch_size,
                         0, 1).to_dict()
    cost.update(latency_against(setup.model, model, setup.splits.input_shape, device,
                                setup.baseline["latency_ms"], spec.latency.batch_size,
                                spec.latency.warmup, spec.latency.runs))
    cost["flops"] = cost["macs"]
    limits = active_limits(spec.objective.constraints, setup.baseline)
    return {"flops": cost["flops"] / setup.baseline["flops"],
            "latency": cost["latency_ms"] / setup.baseline["latency_ms"],
            "feasible": float(is_feasible(violations(limits, cost)))}



def _largest_fitting(prune: Callable[[float], nn.Module], setup: Setup, spec: JobSpec,
                     low: float, high: float, grid: float = 0.05,
                     steps: int = 5) -> nn.Module | None:
    """The pruned network of the largest knob in [low, high] that meets the spec's limits
    as measured: scan down a grid, then bisect between the first fit and the grid point
    above it (Torch-Pruning's global pruning is not monotone in its ratio near the
    extremes, so a plain bisection over the whole range can miss)."""
    knobs = [high - index * grid for index in range(int((high - low) / grid) + 1)]
    for upper, knob in zip([None, *knobs], knobs, strict=False):
        candidate = prune(knob)
        if not _costs(setup, candidate, spec)["feasible"]:
            continue
        best, low = candidate, knob
        if upper is None:
            return best
        high = upper
        for _ in range(steps):
            middle = (low + high) / 2
            candidate = prune(middle)
            if _costs(setup, candidate, spec)["feasible"]:
                low, best = middle, candidate
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
        model = copy.deepcopy(setup.model).eval()
        tp.pruner.BasePruner(
            model, example, importance=tp.importance.GroupMagnitudeImportance(),
            global_pruning=True, pruning_ratio=1.0 - keep_ratio,
            max_pruning_ratio=1.0 - spec.search.min_keep_ratio,
            ignored_layers=[final_classifier(model)], round_to=round_to).step()
        return model

    return uniform if row == ONE_SHOTS[0] else global_magnitude


def run_one_shot(setup: Setup, row: str, target: int, seeds: tuple[int, ...],
                 log: Callable[[str], None]) -> list[dict[str, Any]]:
    """One plan at the target (the largest knob that meets it as measured), fine-tuned
    for the whole budget (search + final steps) once per seed."""
    started = time.perf_counter()
    profile = setup.profile
    spec = make_spec(profile, TARGETS[target][1], "tpe", None, 0)
    model = _largest_fitting(_pruner(setup, spec, row), setup, spec,
                             spec.search.min_keep_ratio, 1.0)
    steps = profile.search_steps + profile.final_steps
    if model is None:
        log(f"{row} {TARGETS[target][0]}: no knob meets the target")
        return [{"row": row, "target": target, "seed": seed, "test": None, "trial_steps": 0,
                 "rerank_steps": 0, "final_steps": 0, "seconds": 0.0} for seed in seeds]
    costs = _costs(setup, model, spec)
    found = time.perf_counter() - started
    outcomes = []
    for seed in seeds:
        began = time.perf_counter()
        test = final_tune(setup, copy.deepcopy(model), steps, seed)
        outcomes.append({"row": row, "target": target, "seed": seed, "test": test,
                         "trial_steps": 0, "rerank_steps": 0, "final_steps": steps,
                         "flops": costs["flops"], "latency": costs["latency"], "dropped": 0,
                         "seconds": found / len(seeds) + time.perf_counter() - began})
    return outcomes
