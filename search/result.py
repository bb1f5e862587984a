"""What a finished search found: the best feasible trial, the Pareto set, or why not.

Feasible and best are Optuna's: every limit a trial breaks is one of its constraints
(``core.trial.TrialRecord.store``), and ``study.best_trial`` / ``study.best_trials``
choose among the trials that meet them all. When no plan met the constraints, the
result says so and names the closest plan and how far it missed each limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from core.errors import TopiaryError
from core.spec import JobSpec
from core.trial import TrialRecord


@dataclass(frozen=True)
class FinishedTrial:
    """A complete trial: its number, its objective values and what it measured.

    Attributes:
        number: the trial's number in the study.
        values: its objective values (accuracy first).
        record: its measurements.
    """

    number: int
    values: list[float]
    record: TrialRecord

    @classmethod
    def of(cls, trial: FrozenTrial) -> FinishedTrial:
        return cls(trial.number, list(trial.values or []), TrialRecord.from_trial(trial))

    @property
    def plan(self) -> dict[str, Any]:
        """The trial's prune plan.

        Raises:
            TopiaryError: the trial recorded no plan (it was never measured).
        """
        if self.record.plan is None:
            raise TopiaryError(f"trial {self.number} recorded no plan; it cannot be finalised")
        return self.record.plan


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
    best: FinishedTrial | None
    pareto: list[FinishedTrial] = field(default_factory=list)
    closest: FinishedTrial | None = None
    message: str = ""


def best_feasible_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Optuna's best trials among those that meet every limit, most accurate first.

    Args:
        study: the job's study.

    Returns:
        ``study.best_trial`` of a single-objective study, the feasible Pareto front
        (``study.best_trials``) of a multi-objective one; empty while no complete
        trial meets every limit.
    """
    if len(study.directions) > 1:
        return sorted(study.best_trials, key=lambda trial: -trial.values[0])
    try:
        return [study.best_trial]
    except ValueError:  # no complete trial yet, or none feasible
        return []


def _describe_miss(trial: FinishedTrial) -> str:
    missed = {k: v for k, v in (trial.record.violations or {}).items() if v > 0}
    parts = ", ".join(f"{name} by {value:.1%}" for name, value in sorted(missed.items()))
    return f"the closest plan (trial {trial.number}) missed {parts}"


def search_result(study: optuna.Study, spec: JobSpec) -> SearchResult:
    """Summarise a study for the finalising worker and for the user."""
    # Measured trials; one whose plan broke a limit has no accuracy (it was not evaluated).
    complete = [finished for trial in study.get_trials(deepcopy=False,
                                                       states=(TrialState.COMPLETE,))
                if (finished := FinishedTrial.of(trial)).record.plan is not None]
    if not complete:
        return SearchResult(False, None, message="no trial finished; nothing to finalise")
    best = [finished for trial in best_feasible_trials(study)
            if (finished := FinishedTrial.of(trial)).record.accuracy is not None]
    if not best:
        closest = min(complete, key=lambda trial: trial.record.worst_violation)
        return SearchResult(False, None, closest=closest,
                            message=f"no plan met the constraints in {len(complete)} trials; "
                                    f"{_describe_miss(closest)}")
    if spec.objective.mode == "pareto":
        return SearchResult(True, best[0], best,
                            message=f"{len(best)} plans on the Pareto front; finalising the "
                                    f"most accurate (trial {best[0].number})")
    return SearchResult(True, best[0], [best[0]],
                        message=f"best feasible plan: trial {best[0].number}, accuracy "
                                f"{best[0].record.accuracy:.3f}")
