"""SEARCHING: run trials of the job's study until it is done, then try to finalise.

Any number of workers of the job's device type take part. After every trial
the worker writes the job's progress and a log line. When the study has its
trials (or the time budget is spent), every participant tries the guarded
move to ``finalizing``; exactly one wins, re-ranks the best plans when the
search is multi-fidelity (``search.rerank``) and finalises. A participant that
waits on other trials runs the job's stall detector (``workers.stall``).
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from core.trial import HEADLINE_FIELDS, TrialRecord
from search.budget import is_surplus
from search.objective import Objective
from search.rerank import RERANK_SEEDS, rerank
from search.storage import open_storage, silence_optuna_logs
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
    silence_optuna_logs()
    spec = run.spec
    context = search_context(runtime, run)
    study = open_study(open_storage(runtime.settings.optuna_url), study_name_for(run.job.id), spec)

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        if is_surplus(trial):
            return
        progress, best = progress_of(study, spec)
        update_progress(runtime.engine, run.job.id, progress, best)
        record = TrialRecord.from_trial(trial)
        runtime.event(run, "trial", _trial_line(trial, record),
                      {"number": trial.number, "state": trial.state.name,
                       "worker": runtime.worker_id,
                       **record.model_dump(include=set(HEADLINE_FIELDS - {"plan"}))})

    objective = Objective(context)
    reason = run_trials(study, objective, spec, should_stop=run.cancel.is_set,
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
    _rerank(runtime, run, study, objective)
    return True


def _rerank(runtime: WorkerRuntime, run: JobRun, study: optuna.Study,
            objective: Objective) -> None:
    """Multi-fidelity's last rung (``search.rerank``), by the worker that finalises."""
    fidelity = run.spec.search.fidelity
    if fidelity.mode != "multi" or not fidelity.rerank:
        return
    runtime.phase(run, f"re-ranking the {fidelity.rerank} best plans: {fidelity.rerank_factor:g}"
                       f" times the trial fine-tune, {RERANK_SEEDS} seeds")
    for number in rerank(study, objective):
        record = TrialRecord.from_trial(study.trials[number])
        runtime.event(run, "trial", f"trial {number} re-ranks trial {record.rerank_of}: "
                      f"accuracy {record.accuracy or 0:.3f} "
                      f"(seeds {', '.join(f'{a:.3f}' for a in record.accuracy_seeds or [])})",
                      {"number": number, "state": "COMPLETE", "worker": runtime.worker_id,
                       **record.model_dump(include=set(HEADLINE_FIELDS - {"plan"}))})
