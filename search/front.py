"""Which plan of a Pareto front a ``pareto`` job finalises (``objective.pick``).

* knee (the default): the plan nearest the ideal point once every objective is
  scaled over the front (0 = the front's best value of it, 1 = its worst). On a
  front of two plans both are equally far, and the more accurate one is taken.
* index ``i``: the ``i``-th plan of the front, most accurate first (past the end,
  the last: the cheapest).
* limit: the most accurate deliverable plan that meets the pick's limits (same
  fields and units as ``objective.constraints``, ratios of the baseline); such a
  plan is on the front when the limits bound only front objectives. When none
  meets them, the plan of the front that misses them by the least.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from core.errors import TopiaryError
from core.limits import active_limits
from core.spec_objective import ParetoPick

if TYPE_CHECKING:
    from search.result import FinishedTrial

__all__ = ["knee", "pick_from_front"]


def knee(front: Sequence[FinishedTrial], signs: Sequence[float]) -> FinishedTrial:
    """The plan nearest the ideal point of the scaled objectives (see the module docstring).

    Args:
        front: the front, most accurate first (ties go to the earlier plan).
        signs: +1 for each objective maximised, -1 for each minimised.
    """
    columns = list(zip(*(trial.values for trial in front), strict=True))
    best = [max(column) if sign > 0 else min(column) for column, sign in zip(columns, signs,
                                                                          strict=True)]
    span = [max(column) - min(column) for column in columns]

    def distance(trial: FinishedTrial) -> float:
        return math.hypot(*(abs(value - top) / width if width > 0 else 0.0
                            for value, top, width in zip(trial.values, best, span,
                                                         strict=True)))

    return min(front, key=distance)


def _misses(trial: FinishedTrial, pick: ParetoPick, baseline: Mapping[str, Any] | None
            ) -> float:
    """How far the trial misses the pick's worst limit (<= 0 when it meets them all)."""
    assert pick.limit is not None
    relative = [name for name, value in pick.limit.model_dump().items()
                if value is not None and name.endswith("_ratio")]
    if relative and not baseline:
        raise TopiaryError(f"objective.pick.limit {', '.join(relative)} needs the baseline's "
                           "metrics, which this job does not have")
    measured = trial.record.model_dump()
    worst = -math.inf
    for limit in active_limits(pick.limit, baseline or {}):
        value = measured.get(limit.metric)
        worst = max(worst, math.inf if value is None else limit.violation(measured))
    return worst


def pick_from_front(front: Sequence[FinishedTrial], deliverable: Sequence[FinishedTrial],
                    pick: ParetoPick, signs: Sequence[float],
                    baseline: Mapping[str, Any] | None = None) -> tuple[FinishedTrial, str]:
    """The plan to finalise and a few words on why.

    Args:
        front: the Pareto front of the deliverable trials, most accurate first (not empty).
        deliverable: every deliverable trial (``search.result.deliverable_trials``).
        pick: ``objective.pick``.
        signs: +1 for each objective maximised, -1 for each minimised.
        baseline: the unpruned network's metrics (ratios of a pick's limits are of these).
    """
    if pick.kind == "index":
        assert pick.index is not None
        position = min(pick.index, len(front) - 1)
        past = "" if position == pick.index else f"; index {pick.index} is past its end"
        return front[position], f"plan {position} of the front, most accurate first{past}"
    if pick.kind == "limit":
        within = [trial for trial in deliverable if _misses(trial, pick, baseline) <= 0]
        if within:
            return (min(within, key=lambda trial: (-trial.values[0], trial.number)),
                    "the most accurate plan within pick.limit")
        closest = min(front, key=lambda trial: _misses(trial, pick, baseline))
        return closest, (f"the plan of the front closest to pick.limit (no plan met it; "
                         f"missed by {_misses(closest, pick, baseline):.1%})")
    return knee(front, signs), "the knee of the front"
