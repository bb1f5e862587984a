"""SEARCHING: run trials of the job's study until it is done, then try to finalise.

Any number of workers of the job's device type take part. After every trial
the worker writes the job's progress and a log line. When the study has its
trials (or the time budget is spent), every participant tries the guarded
move to ``finalizing``; exactly one wins and finalises (re-ranking the best
plans first when the search is multi-fidelity, ``workers.reranking``). A participant that
waits on other trials runs the job's stall detector (``workers.stall``).
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from core.trial import HEADLINE_FIELDS, TrialRecord
from search.budget import is_surplus
from search.objective import Objective
from search.study import open_study, run_trials, study_name_for
from service.errors import InvalidTransitionError
from service.jobs import JobStatus, transition, update_progress
from workers.context import search_context
from workers.progress import progress_of
from workers.runtime import JobRun, WorkerRuntime
from workers.stall import StallWatch


def _trial_line(trial: FrozenTrial, record: TrialRecord) -> str:
    if trial.state != TrialState.COMPLETE:
        return f"trial {trial.number} {trial.state.name.lower()}"
    verdict = "feasible" if record.feasible else "infeasible"
    return (f"trial {trial.number}: accuracy {record.accuracy or 0:.3f}, "
            f"latency {record.latency_ms or 0:.2f} ms, {record.flops or 0:.3g} MACs, "
            f"{verdict}")


def search(runtime: WorkerRuntime, run: JobRun) -> bool:
    """Take part in the search.

    Returns:
        True when this worker won the move to ``finalizing`` and must finalise.
    """
    spec = run.spec
    context = search_context(runtime, run)
    study = open_study(runtime.study_storage(), study_name_for(run.job.id), spec)

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        if is_surplus(trial):
            return
        progress, best = progress_of(study, spec, context.baseline)
        update_progress(runtime.engine, run.job.id, progress, best)
        record = TrialRecord.from_trial(trial)
        runtime.event(run, "trial", _trial_line(trial, record),
                      {"number": trial.number, "state": trial.state.name,
                       "worker": runtime.worker_id,
                       **record.model_dump(include=set(HEADLINE_FIELDS - {"plan"}))})

    reason = run_trials(study, Objective(context), spec, should_stop=run.cancel.is_set,
                        on_trial=after_trial, on_wait=StallWatch(runtime, run))
    if reason == "stopped":
        return False
    if reason == "timeout":
        runtime.event(run, "info", f"time budget of {spec.search.timeout_minutes} min spent")
    try:
        transition(runtime.engine, run.job.id, JobStatus.FINALIZING,
                   expected_from=JobStatus.SEARCHING, worker_id=runtime.worker_id,
                   phase="finalizing")
    except InvalidTransitionError:
        return False  # another participant finalises (or the job ended)
    return True
