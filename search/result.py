"""What a finished search found: the best feasible trial, the Pareto set, or why not.

Feasible is Optuna's rule: every limit a trial breaks is one of its constraints
(``core.trial.TrialRecord.store``), and a trial is feasible when they are all <= 0.
Best is chosen, as Optuna's ``best_trial`` / ``best_trials`` would, among the
feasible trials that prune something: the unpruned plan (which ``weighted`` and
``pareto`` modes have no limit to rule out, and which a sampler may propose by
keeping every width) is never delivered, and a trial it alone dominated stays on
the front. In pareto mode ``objective.pick`` chooses the plan of the front to
finalise (``search.front``: the knee by default). When no plan met the
constraints, the result says so and names the closest plan and how far it missed
each limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from core.errors import TopiaryError
from core.spec import JobSpec
from core.trial import TrialRecord, plan_key
from search.front import pick_from_front


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


def deliverable_trials(study: optuna.Study) -> list[FinishedTrial]:
    """Complete trials whose plan may be delivered: measured, evaluated, feasible by
    Optuna's rule (every constraint <= 0), and pruning something (the unpruned plan is
    never delivered, whatever its accuracy)."""
    finished = [FinishedTrial.of(trial) for trial in
                study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return [trial for trial in finished
            if trial.record.plan is not None and trial.record.accuracy is not None
            and trial.record.feasible is not False and not trial.record.prunes_nothing
            and trial.values]


def each_plan_once(trials: list[FinishedTrial]) -> list[FinishedTrial]:
    """``trials`` in their order, without a trial whose plan an earlier one has."""
    kept, seen = [], set()
    for trial in trials:
        key = plan_key(trial.plan)
        if key not in seen:
            seen.add(key)
            kept.append(trial)
    return kept


def _dominates(first: list[float], second: list[float], signs: list[float]) -> bool:
    pairs = [(a * sign, b * sign) for a, b, sign in zip(first, second, signs, strict=True)]
    return all(a >= b for a, b in pairs) and any(a > b for a, b in pairs)


def _signs(study: optuna.Study) -> list[float]:
    """+1 for an objective to maximise, -1 for one to minimise."""
    return [1.0 if direction == StudyDirection.MAXIMIZE else -1.0
            for direction in study.directions]


def best_deliverable(study: optuna.Study) -> list[FinishedTrial]:
    """The best deliverable trials (``deliverable_trials``), most accurate first: the one
    with the best objective value of a single-objective study (among the re-ranked
    trials once there are any, ``search.rerank``), the Pareto front of a
    multi-objective one (Optuna's rule: constrained dominance among feasible trials)."""
    trials = deliverable_trials(study)
    signs = _signs(study)
    # Multi-fidelity: once plans were re-ranked (search.rerank), the best re-rank wins.
    reranked = [trial for trial in trials if trial.record.fidelity == "long"]
    if len(signs) == 1 and reranked:
        trials = reranked
    if len(signs) == 1:
        return sorted(trials, key=lambda trial: (-signs[0] * trial.values[0], trial.number))[:1]
    front = [trial for trial in trials
             if not any(_dominates(other.values, trial.values, signs) for other in trials)]
    return sorted(front, key=lambda trial: (-trial.values[0], trial.number))


def best_feasible_trials(study: optuna.Study) -> list[FrozenTrial]:
    """``best_deliverable`` as Optuna's trials: the job's best so far while it searches."""
    best = [trial.number for trial in best_deliverable(study)]
    trials = {trial.number: trial for trial in study.get_trials(deepcopy=False)
              if trial.number in best}
    return [trials[number] for number in best]


def _describe_miss(trial: FinishedTrial) -> str:
    missed = {k: v for k, v in (trial.record.violations or {}).items() if v > 0}
    parts = ", ".join(f"{name} by {value:.1%}" for name, value in sorted(missed.items()))
    return f"the closest plan (trial {trial.number}) missed {parts}"


def search_result(study: optuna.Study, spec: JobSpec,
                  baseline: Mapping[str, Any] | None = None) -> SearchResult:
    """Summarise a study for the finalising worker and for the user.

    Args:
        study: the job's study.
        spec: the job spec (its mode, and in pareto mode ``objective.pick``).
        baseline: the unpruned network's metrics, which the ratios of a
            ``pick.limit`` are of.
    """
    # Measured trials; one whose plan broke a limit has no accuracy (it was not evaluated).
    complete = [finished for trial in study.get_trials(deepcopy=False,
                                                       states=(TrialState.COMPLETE,))
                if (finished := FinishedTrial.of(trial)).record.plan is not None]
    if not complete:
        return SearchResult(False, None, message="no trial finished; nothing to finalise")
    best = best_deliverable(study)
    if not best:
        pruning = [trial for trial in complete if not trial.record.prunes_nothing]
        if not pruning:
            return SearchResult(False, None, message=f"none of the {len(complete)} trials "
                                                     "pruned anything; nothing to finalise")
        closest = min(pruning, key=lambda trial: trial.record.worst_violation)
        return SearchResult(False, None, closest=closest,
                            message=f"no plan met the constraints in {len(complete)} trials; "
                                    f"{_describe_miss(closest)}")
    if spec.objective.mode == "pareto":
        chosen, why = pick_from_front(best, deliverable_trials(study), spec.objective.pick,
                                      _signs(study), baseline)
        return SearchResult(True, chosen, best,
                            message=f"{len(best)} plans on the Pareto front; finalising "
                                    f"{why} (trial {chosen.number})")
    return SearchResult(True, best[0], [best[0]],
                        message=f"best feasible plan: trial {best[0].number}, accuracy "
                                f"{best[0].record.accuracy:.3f}")
