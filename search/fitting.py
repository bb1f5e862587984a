"""Sizing plan shapes to the limits: the widest plan of a shape that meets them, at the
depths worth trying.

A plan fits when its really pruned network meets every limit as a trial checks
it (``search.costs``): FLOPs and parameters counted, latency and memory
measured on the worker's device. Under FLOPs and parameter limits alone, a fit made
``counted`` counts them from the plan's widths (``models.plan_count``: a fraction of a
millisecond where pruning a copy and counting it takes about 0.1 s for ResNet-56 on a
CPU core), and the plan a caller settles on is confirmed on its really pruned network
(``PlanFit.confirm``); should the two counts ever differ, the fit counts every plan on
its pruned network from then on. Measured limits are aimed ``MEASURED_MARGIN``
under, as timings are noisy, and a plan that misses only its latency aim, by at
most ``search.costs.RETIME_WITHIN``, is timed once more and the faster timing
stands: one noisy miss would cut a width bisection short and leave a far
narrower plan.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from models.importance import ImportanceScores
from models.plan import BlockInfo, GroupInfo, PrunePlan, apply_plan
from models.plan_count import PlanCosts
from search.constraints import Limit
from search.costs import RETIME_WITHIN, Aim, CostModel, LatencyTimer
from search.warm_start import shaped_plan

__all__ = ["MEASURED_MARGIN", "MEASURED_STEPS", "PlanFit", "fitted_plans"]

#: Measured limits (latency, memory) are aimed at this fraction under the limit.
MEASURED_MARGIN = 0.03
#: Bisection steps on the width knob when every step is a timing.
MEASURED_STEPS = 8


class PlanFit:
    """Whether a plan's pruned network meets every limit, memoised by plan.

    Args:
        model: the unpruned network (never modified).
        example_input: a batch of its input shape, on the device trials measure on.
        limits: the active limits.
        margin: the share of a measured limit left free for timing noise.
        timer: how latency and memory are measured; by default alone, one sample a
            batch. With the baseline's recorded latency, plans are timed side by side
            with ``model``, as trials are, and trials may reuse those timings
            (``latency``).
        counted: count FLOPs and parameters from the plans' widths when every limit is
            on them (none measured); the caller confirms the plan it settles on.
    """

    def __init__(self, model: nn.Module, example_input: Tensor, limits: Sequence[Limit],
                 margin: float = MEASURED_MARGIN, timer: LatencyTimer | None = None,
                 counted: bool = False) -> None:
        self.model = model
        self.example_input = example_input
        timer = timer or LatencyTimer(model, tuple(example_input.shape[1:]),
                                      example_input.device)
        self.costs = CostModel(timer, Aim(tuple(limits), margin, RETIME_WITHIN))
        self.measured = self.costs.aim.measured
        self._records: dict[str, dict[str, Any]] = {}
        #: Under counted limits alone, FLOPs and parameters counted from the widths (until
        #: ``confirm`` finds a count wrong); None: every plan's network is pruned and counted.
        self.counts = (PlanCosts(model, example_input)
                       if counted and limits and not self.measured else None)

    def metrics(self, plan: PrunePlan) -> dict[str, Any]:
        """The limited quantities (and FLOPs) of the plan's pruned network
        (``search.costs.CostModel.limited_costs``); under counted limits with ``counts``,
        its FLOPs and parameters (``models.plan_count.PlanCosts``)."""
        if self.counts is not None:
            macs, params = self.counts(plan)
            return {"flops": float(macs), "params": float(params)}
        key = plan.fingerprint()
        if key not in self._records:
            pruned = apply_plan(copy.deepcopy(self.model), plan, self.example_input)
            self._records[key] = self.costs.limited_costs(pruned)
        return self._records[key]

    def confirm(self, plan: PrunePlan) -> bool:
        """Whether ``plan``'s counted FLOPs and parameters are those of its really pruned
        network (always, when nothing is counted from widths). When they are not, later
        checks prune and count every plan (``PlanCosts.confirm``)."""
        return self.counts is None or self.counts.confirm(plan)

    def flops(self, plan: PrunePlan) -> float:
        return float(self.metrics(plan)["flops"])

    def latency(self, plan: PrunePlan) -> dict[str, Any] | None:
        """The plan's ``latency_ms`` and ``latency_p90_ms`` as a trial would record them
        (timed side by side with the baseline) and the ``arch_fingerprint`` of its
        network, or None when it was not timed so."""
        record = self._records.get(plan.fingerprint())
        if (self.costs.timer.baseline_latency_ms is None or record is None
                or "latency_ms" not in record):
            return None
        return {"latency_ms": record["latency_ms"], "latency_p90_ms": record["latency_p90_ms"],
                "arch_fingerprint": record["arch_fingerprint"]}

    def __call__(self, plan: PrunePlan) -> bool:
        return not self.costs.aim.missed(self.metrics(plan))


def fitted_plans(groups: Sequence[GroupInfo], blocks: Sequence[BlockInfo], fits: PlanFit,
                 scores: ImportanceScores | None, drops: int, spread: float = 0.0,
                 round_to: int = 1, deepen: bool = True,
                 rank: Callable[[PrunePlan], float] | None = None) -> list[PrunePlan]:
    """The plans of one shape (``search.warm_start.shaped_plan``) that meet the limits,
    one per depth tried, best first.

    When the shape does not fit at ``drops`` blocks, one more block is dropped
    until it does (with ``deepen`` and scores to rank blocks): the latency of a
    small network is mostly per-layer overhead. Under counted limits that first
    fit already uses the budget; under measured ones a deeper plan may keep far
    wider layers (one block fewer can cost every layer most of its width), so
    deeper plans are tried until full widths fit. The plans are ordered by FLOPs
    kept, most first (the shallowest on ties), or by ``rank``, highest first,
    when given.

    Returns:
        The plans, none when no depth of the shape fits.
    """
    most = len(blocks) if deepen and scores is not None else drops
    steps = {"steps": MEASURED_STEPS} if fits.measured else {}
    candidates = []
    for dropped in range(drops, most + 1):
        plan = shaped_plan(groups, blocks, fits, scores, dropped, spread, round_to, **steps)
        if plan is None:
            continue
        candidates.append(plan)
        if not fits.measured or not plan.keep:
            break
    score = rank or fits.flops
    return sorted(candidates, key=lambda plan: -score(plan))  # stable: shallowest on ties
