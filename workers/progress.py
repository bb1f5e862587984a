"""A job's progress and best-so-far, summarised from its Optuna study."""

from __future__ import annotations

import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from core.spec import JobSpec
from search.budget import is_surplus
from search.study import STARTED_AT_ATTR

_METRICS = ("accuracy", "latency_ms", "latency_p90_ms", "memory_mb", "flops", "params")


def trial_summary(trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    return {"trial": trial.number, "plan": attrs.get("plan"), "feasible": attrs.get("feasible"),
            **{key: attrs.get(key) for key in _METRICS}}


def progress_of(study: optuna.Study, spec: JobSpec) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(progress, best feasible trial so far or None) for the job row.

    ETA assumes the remaining trials take as long as the finished ones did on
    average, shared by however many workers are running trials now.
    """
    trials = [t for t in study.get_trials(deepcopy=False) if not is_surplus(t)]
    count = {state: sum(1 for t in trials if t.state == state) for state in TrialState}
    finished = count[TrialState.COMPLETE] + count[TrialState.PRUNED]
    started = float(study.user_attrs.get(STARTED_AT_ATTR, time.time()))
    elapsed = max(0.0, time.time() - started)
    total = spec.search.n_trials
    parallel = max(1, count[TrialState.RUNNING])
    eta = elapsed / finished * (total - finished) / parallel if finished else None
    progress = {
        "trials_complete": count[TrialState.COMPLETE],
        "trials_pruned": count[TrialState.PRUNED],
        "trials_running": count[TrialState.RUNNING],
        "trials_failed": count[TrialState.FAIL],
        "trials_total": total,
        "elapsed_seconds": round(elapsed, 1),
        "eta_seconds": round(eta, 1) if eta is not None else None,
    }
    feasible = [t for t in trials if t.state == TrialState.COMPLETE
                and t.user_attrs.get("feasible") and t.values]
    best = max(feasible, key=lambda t: t.values[0], default=None)
    return progress, trial_summary(best) if best is not None else None
