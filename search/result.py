"""What a finished search found: the best feasible trial, the Pareto set, or why not.

When no plan met the constraints, the result says so and names the closest
plan and how far it missed each limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from core.spec import JobSpec


@dataclass
class TrialSummary:
    number: int
    values: list[float]
    attrs: dict[str, Any]

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialSummary:
        return cls(trial.number, list(trial.values or []), dict(trial.user_attrs))

    @property
    def plan(self) -> dict[str, Any]:
        return self.attrs["plan"]

    def metrics(self) -> dict[str, Any]:
        keys = ("accuracy", "latency_ms", "latency_p90_ms", "memory_mb", "flops", "params")
        return {"trial": self.number, **{k: self.attrs.get(k) for k in keys}}


@dataclass
class SearchResult:
    """The outcome of a search.

    Attributes:
        feasible: whether any finished trial met every limit.
        best: the trial to finalise (None when nothing is feasible).
        pareto: the non-dominated feasible trials (pareto mode; else [best]).
        closest: when nothing is feasible, the trial that missed by the least.
        message: one sentence for the user.
    """

    feasible: bool
    best: TrialSummary | None
    pareto: list[TrialSummary] = field(default_factory=list)
    closest: TrialSummary | None = None
    message: str = ""


def _worst_violation(trial: FrozenTrial) -> float:
    return max(trial.user_attrs.get("violations", {}).values(), default=0.0)


def _describe_miss(trial: TrialSummary) -> str:
    missed = {k: v for k, v in trial.attrs.get("violations", {}).items() if v > 0}
    parts = ", ".join(f"{name} by {value:.1%}" for name, value in sorted(missed.items()))
    return f"the closest plan (trial {trial.number}) missed {parts}"


def search_result(study: optuna.Study, spec: JobSpec) -> SearchResult:
    """Summarise a study for the finalising worker and for the user."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if "accuracy" in t.user_attrs]
    if not complete:
        return SearchResult(False, None, message="no trial finished; nothing to finalise")
    feasible = [t for t in complete if t.user_attrs.get("feasible")]
    if not feasible:
        closest = TrialSummary.of(min(complete, key=_worst_violation))
        return SearchResult(False, None, closest=closest,
                            message=f"no plan met the constraints in {len(complete)} trials; "
                                    f"{_describe_miss(closest)}")
    if spec.objective.mode == "pareto":
        front = [t for t in study.best_trials if t.user_attrs.get("feasible")]
        pareto = sorted((TrialSummary.of(t) for t in front), key=lambda s: -s.values[0])
        best = pareto[0]
        return SearchResult(True, best, pareto,
                            message=f"{len(pareto)} plans on the Pareto front; finalising the "
                                    f"most accurate (trial {best.number})")
    best = TrialSummary.of(max(feasible, key=lambda t: t.values[0]))
    return SearchResult(True, best, [best],
                        message=f"best feasible plan: trial {best.number}, accuracy "
                                f"{best.attrs['accuracy']:.3f}")
