"""The objective part of the job spec: mode, hard limits, weights, and which point of a
Pareto front is delivered (``core.spec`` uses ``ObjectiveSpec`` and re-exports
``Constraints``).

Torch-free, like the rest of the spec.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Constraints", "ObjectiveSpec", "ObjectiveWeights", "ParetoPick"]

#: The largest front position ``objective.pick.index`` may name.
MAX_PICK_INDEX = 10_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Ratio = Field(default=None, gt=0, le=1)


class Constraints(_Strict):
    """Hard limits; a ratio is relative to the unpruned baseline, in (0, 1]."""

    max_latency_ratio: float | None = Ratio
    max_latency_ms: float | None = Field(default=None, gt=0, le=1e7)
    max_memory_ratio: float | None = Ratio
    max_memory_mb: float | None = Field(default=None, gt=0, le=1e7)
    max_flops_ratio: float | None = Ratio
    max_flops: float | None = Field(default=None, gt=0, le=1e18)
    max_params_ratio: float | None = Ratio
    max_params: float | None = Field(default=None, gt=0, le=1e12)

    def is_empty(self) -> bool:
        return all(value is None for value in self.model_dump().values())


class ObjectiveWeights(_Strict):
    """Weights of the normalised costs in ``weighted`` mode (accuracy has weight 1)."""

    latency: float = Field(default=0.5, ge=0, le=100)
    memory: float = Field(default=0.0, ge=0, le=100)


_PICK_FORMS = ("'knee', {\"index\": i} (0 = the most accurate plan of the front) or "
               "{\"limit\": {...}} (the most accurate plan within those limits)")


class ParetoPick(_Strict):
    """Which plan a ``pareto`` job finalises. Write it as ``"knee"`` (the default),
    ``{"index": i}`` or ``{"limit": {"max_latency_ratio": 0.3}}``.

    * knee: the plan of the front nearest the ideal point (each objective scaled to
      0 = the front's best value, 1 = its worst);
    * index: the ``i``-th plan of the front, most accurate first (0 = the most
      accurate pruned plan; past the end, the last, i.e. the cheapest);
    * limit: the most accurate plan that meets these limits (the fields and units
      of ``objective.constraints``); when none does, the plan of the front that
      misses them by the least, and the job's result says so.

    The unpruned plan is never finalised, whatever the pick.
    """

    index: int | None = Field(default=None, ge=0, le=MAX_PICK_INDEX)
    limit: Constraints | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_word(cls, value: Any) -> Any:
        if value == "knee":
            return {}
        if not isinstance(value, dict):
            raise ValueError(f"pick must be {_PICK_FORMS}, not {value!r}"[:300])
        return value

    @model_validator(mode="after")
    def _one_way(self) -> ParetoPick:
        if self.index is not None and self.limit is not None:
            raise ValueError("pick a plan by index or by limit, not both")
        if self.limit is not None and self.limit.is_empty():
            raise ValueError("pick.limit needs at least one limit, e.g. "
                             "{\"max_latency_ratio\": 0.5}")
        return self

    @property
    def kind(self) -> Literal["knee", "index", "limit"]:
        if self.index is not None:
            return "index"
        return "limit" if self.limit is not None else "knee"


class ObjectiveSpec(_Strict):
    mode: Literal["constrained", "weighted", "pareto"] = "constrained"
    constraints: Constraints = Field(default_factory=Constraints)
    weights: ObjectiveWeights = Field(default_factory=ObjectiveWeights)
    pareto_memory: bool = Field(default=False, description="add memory as a third objective")
    pick: ParetoPick = Field(
        default_factory=ParetoPick,
        description=f"pareto mode: the plan of the front to finalise: {_PICK_FORMS}")

    @model_validator(mode="after")
    def _constrained_needs_a_limit(self) -> ObjectiveSpec:
        if self.mode == "constrained" and self.constraints.is_empty():
            raise ValueError("mode 'constrained' needs at least one constraint, e.g. "
                             "constraints: {max_latency_ratio: 0.5}")
        return self

    @model_validator(mode="after")
    def _pick_is_for_a_front(self) -> ObjectiveSpec:
        # The default (knee) is in every stored spec, so only a chosen point is refused.
        if self.mode != "pareto" and self.pick.kind != "knee":
            raise ValueError(f"objective.pick chooses a plan of a Pareto front; it needs "
                             f"mode 'pareto', not {self.mode!r}")
        return self
