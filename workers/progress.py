"""A job's progress and best-so-far, summarised from its Optuna study."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import TrialState

from core.progress import JobProgress
from core.spec import JobSpec
from search.budget import is_surplus
from search.rerank import RERANK_OF_ATTR
from search.result import FinishedTrial, best_feasible_trials, search_result
from search.study import STARTED_AT_ATTR


def best_so_far(trial: FinishedTrial) -> dict[str, Any]:
    """The job's ``best`` while it searches: the trial's number, plan, accuracy and costs."""
    return {"trial": trial.number, **trial.record.headline()}


def progress_of(study: optuna.Study, spec: JobSpec,
                baseline: Mapping[str, Any] | None = None,
                ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(progress, best so far or None) for the job row.

    The best so far is the trial the job would finalise if the search ended now: the
    best feasible trial, or in pareto mode the plan of the front ``objective.pick``
    names (its limit's ratios are of ``baseline``), not the front's most accurate plan.
    Elapsed time counts from the start of the search (shared by every worker);
    ``core.progress`` estimates the time left from it.
    """
    # Re-rank trials (search.rerank) measure plans again after the budget: not counted.
    trials = [t for t in study.get_trials(deepcopy=False)
              if not is_surplus(t) and RERANK_OF_ATTR not in t.user_attrs]
    count = {state: sum(1 for t in trials if t.state == state) for state in TrialState}
    started = float(study.user_attrs.get(STARTED_AT_ATTR, time.time()))
    progress = JobProgress(
        trials_complete=count[TrialState.COMPLETE], trials_pruned=count[TrialState.PRUNED],
        trials_running=count[TrialState.RUNNING], trials_failed=count[TrialState.FAIL],
        trials_total=spec.search.n_trials,
    ).timed(max(0.0, time.time() - started))
    if spec.objective.mode == "pareto":
        best = search_result(study, spec, baseline).best
    else:
        feasible = best_feasible_trials(study)
        best = FinishedTrial.of(feasible[0]) if feasible else None
    return progress.model_dump(), best_so_far(best) if best is not None else None
