"""What one trial measured: the record the objective writes and every reader reads.

A trial keeps its record in Optuna's storage: each field is one user attribute of
the same name, and the limits it broke are Optuna constraints (``trial.set_constraint``,
one per limit, ``value / limit - 1``), so Optuna's ``best_trial`` and ``best_trials``
judge feasibility by the same numbers. Torch- and Optuna-free: a trial is anything
with ``user_attrs`` and ``constraints`` (Optuna's ``Trial`` and ``FrozenTrial``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, computed_field

#: What a trial's accuracy can have measured, cheapest first (``TrialRecord.fidelity``).
FIDELITIES = ("costs", "pruned", "probe", "short", "long")

#: What the job's best-so-far and a trial's event show: the plan, accuracy and costs.
HEADLINE_FIELDS = frozenset({"plan", "accuracy", "latency_ms", "latency_p90_ms", "memory_mb",
                             "flops", "params", "feasible", "fidelity"})


def is_feasible(violations: Mapping[str, float]) -> bool:
    """Optuna's rule: feasible when every constraint value is zero or less."""
    return all(value <= 0 for value in violations.values())


class StoredTrial(Protocol):
    """A trial as Optuna keeps it (``optuna.trial.FrozenTrial`` or a running ``Trial``)."""

    @property
    def user_attrs(self) -> dict[str, Any]: ...

    @property
    def constraints(self) -> dict[str, float]: ...


class WritableTrial(StoredTrial, Protocol):
    """A trial the record can be written to (``optuna.Trial``; ``FrozenTrial`` in tests)."""

    def set_user_attr(self, key: str, value: Any) -> None: ...

    def set_constraint(self, key: str, value: float) -> None: ...


def plan_key(plan: dict[str, Any] | None) -> str:
    """A plan dict (``PrunePlan.to_dict()``) as one comparable string: equal plans, equal
    keys, whether the dict is fresh or came back from a study's JSON."""
    return json.dumps(plan, sort_keys=True)


class TrialRecord(BaseModel):
    """The measurements of one trial; a field is None when the trial did not record it
    (a trial stopped by the pruner or one that failed, or a study written before the
    field existed).

    Attributes:
        plan: the prune plan (``models.plan.PrunePlan.to_dict()``) the trial measured.
        sampled_plan: the plan as the sampler proposed it, when it broke a counted
            limit and ``plan`` is its projection onto the limits (``search.projection``).
        projected: the sampled plan broke a counted limit and was scaled onto it.
        accuracy: validation accuracy after the trial's fine-tune (the pruned network's
            own accuracy when it was not fine-tuned).
        accuracy_pruned: validation accuracy right after pruning, before fine-tuning.
        accuracy_probe: validation accuracy after the adaptive-BatchNorm probe (BatchNorm
            statistics re-estimated, no training; ``search.fidelity`` multi).
        accuracy_seeds: a re-rank's accuracy with each seed (``accuracy`` is their mean).
        fidelity: what ``accuracy`` measured (``FIDELITIES``): ``costs`` (the plan broke
            a limit and was not evaluated), ``pruned`` (right after pruning, no
            fine-tune), ``probe`` (screened out after the probe), ``short`` (the trial
            fine-tune), ``long`` (a re-rank: a longer fine-tune, two seeds).
        rerank_of: a re-rank trial's source: the number of the trial whose plan it is.
        duplicate_of: an earlier trial that measured the same plan: this one took its
            measurements (nothing pruned, timed or fine-tuned again).
        latency_ms: median latency of one pass, in the baseline's timing conditions.
        latency_p90_ms: its 90th percentile.
        latency_ratio: measured latency over the unpruned network's, timed side by side.
        latency_raw_ms: the plain median of that side-by-side timing.
        latency_reused: the latency came from an identical architecture timed earlier.
        latency_seeded: the latency came from warm-start seeding's timing of this plan.
        latency_retimed: the plan broke only a latency limit and was timed once more.
        latency_runtime: what the latency was timed in (``latency.runtime``: torch,
            onnxruntime, openvino).
        memory_mb: weights plus peak activations, MiB.
        model_mb: parameters and buffers, MiB.
        peak_activation_mb: peak activation memory, MiB.
        flops: multiply-accumulates per sample (as ``macs``).
        macs: multiply-accumulates per sample.
        params: parameter count.
        batch_size: samples per timed pass.
        device_type: ``cpu`` or ``cuda``.
        device_name: CPU model or GPU name.
        threads: torch intra-op threads while timing.
        arch_fingerprint: identifies the pruned architecture (same shapes, same value).
        fine_tune_seconds: wall time of the trial's fine-tune (0 when skipped).
        worker: the worker process that ran the trial.
        violations: limit name -> ``value / limit - 1`` (met when <= 0), stored as the
            trial's Optuna constraints; empty when the job has no limits.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    plan: dict[str, Any] | None = None
    sampled_plan: dict[str, Any] | None = None
    projected: bool | None = None
    accuracy: float | None = None
    accuracy_pruned: float | None = None
    accuracy_probe: float | None = None
    accuracy_seeds: list[float] | None = None
    fidelity: Literal["costs", "pruned", "probe", "short", "long"] | None = None
    rerank_of: int | None = None
    duplicate_of: int | None = None
    latency_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_ratio: float | None = None
    latency_raw_ms: float | None = None
    latency_reused: bool | None = None
    latency_seeded: bool | None = None
    latency_retimed: bool | None = None
    latency_runtime: str | None = None
    memory_mb: float | None = None
    model_mb: float | None = None
    peak_activation_mb: float | None = None
    flops: float | None = None
    macs: float | None = None
    params: float | None = None
    batch_size: int | None = None
    device_type: str | None = None
    device_name: str | None = None
    threads: int | None = None
    arch_fingerprint: str | None = None
    fine_tune_seconds: float | None = None
    worker: str | None = None
    violations: dict[str, float] | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def feasible(self) -> bool | None:
        """Every limit met (Optuna's rule); None when the trial recorded no measurement."""
        return None if self.violations is None else is_feasible(self.violations)

    @property
    def prunes_nothing(self) -> bool:
        """The plan keeps every channel and every block: the unpruned network, which is
        never delivered. False when no plan was recorded."""
        return (self.plan is not None and not self.plan.get("keep")
                and not self.plan.get("drop_blocks"))

    @property
    def worst_violation(self) -> float:
        """How far the plan missed its worst-broken limit (<= 0 when it met them all)."""
        return max((self.violations or {}).values(), default=0.0)

    @classmethod
    def from_trial(cls, trial: StoredTrial) -> TrialRecord:
        """The record a trial stored; attributes that are not fields are ignored.

        Args:
            trial: an Optuna trial, running or frozen.
        """
        attrs = trial.user_attrs
        stored = {name: attrs[name] for name in cls.model_fields
                  if name in attrs and name != "violations"}
        constraints = dict(trial.constraints)
        measured = bool(constraints) or "plan" in stored
        return cls.model_validate({**stored, "violations": constraints if measured else None})

    def store(self, trial: WritableTrial) -> None:
        """Write the record onto a running trial: the violations as Optuna constraints,
        every other field that is set as a user attribute of the field's name.

        Optuna keeps the first value of a constraint, so store violations once, final.
        """
        for name, value in (self.violations or {}).items():
            trial.set_constraint(name, value)
        for name, value in self.model_dump(exclude={"violations", "feasible"},
                                           exclude_none=True).items():
            trial.set_user_attr(name, value)

    def headline(self) -> dict[str, Any]:
        """The plan, accuracy, costs and feasibility (``HEADLINE_FIELDS``)."""
        return self.model_dump(include=set(HEADLINE_FIELDS))
