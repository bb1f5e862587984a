"""Hard limits from the spec, as Optuna constraint values (feasible when <= 0).

Each limit is ``value / limit - 1``: 0.12 means 12% over the limit, so the
same number tells Optuna about feasibility and a user how far a plan missed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.spec import Constraints

# constraint field -> (metric key in a trial's record, is it a ratio of the baseline?)
_LIMITS: dict[str, tuple[str, bool]] = {
    "max_latency_ratio": ("latency_ms", True),
    "max_latency_ms": ("latency_ms", False),
    "max_memory_ratio": ("memory_mb", True),
    "max_memory_mb": ("memory_mb", False),
    "max_flops_ratio": ("flops", True),
    "max_flops": ("flops", False),
    "max_params_ratio": ("params", True),
    "max_params": ("params", False),
}


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

    def violation(self, metrics: dict[str, Any]) -> float:
        return float(metrics[self.metric]) / self.limit - 1.0


def active_limits(constraints: Constraints, baseline: dict[str, Any]) -> list[Limit]:
    """The spec's non-null limits, with ratios turned into absolute values."""
    limits = []
    for name, value in constraints.model_dump().items():
        if value is None:
            continue
        metric, relative = _LIMITS[name]
        limits.append(Limit(name, metric, value * float(baseline[metric]) if relative else value))
    return limits


def violations(limits: list[Limit], metrics: dict[str, Any]) -> dict[str, float]:
    """Constraint name -> violation (<= 0 when met)."""
    return {limit.name: limit.violation(metrics) for limit in limits}
