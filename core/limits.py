"""The hard limits of a job spec in absolute units, and how a network stands against them.

Each limit's violation is ``value / limit - 1``: 0.12 means 12% over the limit, so
the same number tells Optuna about feasibility (a constraint is met when <= 0) and
a user how far a plan missed. Torch- and Optuna-free: the search turns limits into
constraints (``search.constraints``), the API shows each one beside the value the
job delivered (``limit_standings``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from core.spec import Constraints

__all__ = ["LIMIT_METRICS", "Limit", "LimitStanding", "active_limits", "limit_standings",
           "missed_limits", "violations"]

#: constraint field -> (metric key in a trial's record, is it a ratio of the baseline?)
LIMIT_METRICS: dict[str, tuple[str, bool]] = {
    "max_latency_ratio": ("latency_ms", True),
    "max_latency_ms": ("latency_ms", False),
    "max_memory_ratio": ("memory_mb", True),
    "max_memory_mb": ("memory_mb", False),
    "max_flops_ratio": ("flops", True),
    "max_flops": ("flops", False),
    "max_params_ratio": ("params", True),
    "max_params": ("params", False),
}
# A delivered value this close above its limit is float rounding, not a miss.
_ROUNDING = 1e-9


@dataclass(frozen=True)
class Limit:
    """One active limit in absolute units.

    Attributes:
        name: the spec field (``max_latency_ratio``).
        metric: the measured quantity it bounds (``latency_ms``).
        limit: the largest allowed value of the metric.
    """

    name: str
    metric: str
    limit: float

    def violation(self, metrics: Mapping[str, Any]) -> float:
        return float(metrics[self.metric]) / self.limit - 1.0


def active_limits(constraints: Constraints, baseline: Mapping[str, Any]) -> list[Limit]:
    """The spec's non-null limits, with ratios turned into absolute values."""
    limits = []
    for name, value in constraints.model_dump().items():
        if value is None:
            continue
        metric, relative = LIMIT_METRICS[name]
        limits.append(Limit(name, metric, value * float(baseline[metric]) if relative else value))
    return limits


def violations(limits: list[Limit], metrics: Mapping[str, Any]) -> dict[str, float]:
    """Constraint name -> violation (<= 0 when met)."""
    return {limit.name: limit.violation(metrics) for limit in limits}


def missed_limits(limits: list[Limit], metrics: Mapping[str, Any]) -> dict[str, float]:
    """The limits ``metrics`` misses: name -> ``value / limit - 1`` (> 0)."""
    return {name: value for name, value in violations(limits, metrics).items() if value > 0}


class LimitStanding(BaseModel):
    """One limit of the spec beside the value the job delivered, in the spec's unit."""

    name: str = Field(description="the constraint, e.g. max_latency_ratio")
    metric: str = Field(description="what it bounds: latency_ms, memory_mb, flops, params")
    limit: float = Field(description="the spec's value (a ratio of the baseline for *_ratio)")
    delivered: float | None = Field(
        description="the delivered (or best so far) model's value in the same unit; null "
                    "until measured")
    met: bool | None = Field(description="delivered <= limit; null until measured")
    missed_by: float | None = Field(
        description="delivered / limit - 1 when missed (0.06: 6% over), else 0")


def limit_standings(constraints: Constraints, baseline: Mapping[str, Any] | None,
                    delivered: Mapping[str, Any] | None) -> list[LimitStanding]:
    """Every limit of the spec beside ``delivered``'s value (a ratio for ratio limits).

    Args:
        constraints: the spec's limits.
        baseline: the unpruned network's metrics (ratios are of these).
        delivered: the delivered (or best so far) model's metrics; None before any.
    """
    standings = []
    for name, value in constraints.model_dump().items():
        if value is None:
            continue
        metric, relative = LIMIT_METRICS[name]
        measured = (delivered or {}).get(metric)
        reference = (baseline or {}).get(metric)
        shown: float | None = None
        if measured is not None and not relative:
            shown = float(measured)
        elif measured is not None and reference:
            shown = float(measured) / float(reference)
        missed = None if shown is None else max(0.0, shown / value - 1.0)
        standings.append(LimitStanding(
            name=name, metric=metric, limit=value, delivered=shown,
            met=None if missed is None else missed <= _ROUNDING,
            missed_by=None if missed is None or missed <= _ROUNDING else missed))
    return standings
