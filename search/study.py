"""Create or join a job's study, enqueue warm-start plans, run trials until done.

Any number of processes may call ``run_trials`` on one study (PostgreSQL);
each stops when the study has ``n_trials`` finished trials, when the job's
time budget (counted from the study's start, shared by all processes) is
spent, or when ``should_stop`` says the job was cancelled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import optuna
from optuna.storages import BaseStorage

from core.errors import TopiaryError, TrainingCancelled
from core.spec import JobSpec
from models.plan import PrunePlan
from search.budget import SurplusTrial, budget_reached, budget_taken, fail_stale_trials
from search.costs import LatencyCache
from search.samplers import directions, make_pruner, make_sampler
from search.space import SearchSpace

STARTED_AT_ATTR = "search_started_at"
WARM_START_ATTR = "warm_start"
#: User attribute of a re-queued trial: the number of the trial it runs again.
RETRY_OF_ATTR = "retry_of"


class SearchError(TopiaryError):
    """The search cannot go on (for example every trial keeps failing)."""

    code = "search_failed"


def study_name_for(job_id: str | int) -> str:
    return f"topiary-job-{job_id}"


def open_study(storage: BaseStorage, name: str, spec: JobSpec) -> optuna.Study:
    """Create the study, or join it when another process already did.

    The sampler lives in the process, not in the storage, so every joining
    process builds its own from the spec (same seed, same settings).
    """
    study = optuna.create_study(
        storage=storage, study_name=name, load_if_exists=True,
        sampler=make_sampler(spec), pruner=make_pruner(spec), directions=directions(spec),
    )
    if STARTED_AT_ATTR not in study.user_attrs:
        study.set_user_attr(STARTED_AT_ATTR, time.time())
    return study


def enqueue_plans(study: optuna.Study, space: SearchSpace,
                  plans: Sequence[tuple[str, PrunePlan]],
                  measured: LatencyCache | None = None) -> int:
    """Enqueue labelled plans as the first trials (skipping ones already queued).

    ``measured`` (the latencies seeding sized the plans with, from
    ``search.seeding.seed_plans``) is shared with the study
    (``search.costs.LatencyCache.share``): a trial that builds one of those
    networks reuses its latency instead of timing it again.

    Returns:
        how many distinct plans are queued.
    """
    if measured:
        measured.share(study)  # before the trials that read it can start
    seen: set[str] = set()
    for label, plan in plans:
        params = space.params_for(plan.keep, plan.drop_blocks)
        key = repr(sorted(params.items()))
        if key in seen:
            continue
        seen.add(key)
        study.enqueue_trial(params, user_attrs={WARM_START_ATTR: label}, skip_if_exists=True)
    return len(seen)


def requeue_on_transient_error(study: optuna.Study,
                               objective: Callable[[optuna.Trial], float | Sequence[float]]
                               ) -> Callable[[optuna.Trial], float | Sequence[float]]:
    """``objective``, but a trial that raises a transient error (``TopiaryError.transient``,
    e.g. a latency agent that stayed away) is queued again with the same parameters and
    warm-start label before it fails, so no plan is lost to an outage."""

    def run_or_requeue(trial: optuna.Trial) -> float | Sequence[float]:
        try:
            return objective(trial)
        except TopiaryError as error:
            if error.transient:
                attrs = {key: value for key, value in trial.user_attrs.items()
                         if key == WARM_START_ATTR}
                study.enqueue_trial(trial.params,
                                    user_attrs={**attrs, RETRY_OF_ATTR: trial.number})
            raise

    return run_or_requeue


def seconds_left(study: optuna.Study, spec: JobSpec) -> float | None:
    if spec.search.timeout_minutes is None:
        return None
    started = float(study.user_attrs.get(STARTED_AT_ATTR, time.time()))
    return started + spec.search.timeout_minutes * 60 - time.time()


def run_trials(study: optuna.Study,
               objective: Callable[[optuna.Trial], float | Sequence[float]], spec: JobSpec,
               should_stop: Callable[[], bool] = lambda: False,
               on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
               max_consecutive_failures: int = 3, wait_seconds: float = 1.0,
               on_wait: Callable[[optuna.Study], None] | None = None) -> str:
    """Run trials in this process until the study is done.

    When every remaining slot is held by another process's running trial, it
    waits (failing trials whose process died, so they are re-queued) instead
    of starting trials that could not count, and calls ``on_wait`` each time
    round (the job's stall detector, ``workers.stall``; it may raise to give up).

    Returns:
        why it stopped: ``budget`` (n_trials finished), ``timeout`` or ``stopped``.

    A trial that raises a transient error is queued again
    (``requeue_on_transient_error``) and still counts as a failure in a row.

    Raises:
        SearchError: ``max_consecutive_failures`` trials in a row raised.
    """
    failures = 0
    objective = requeue_on_transient_error(study, objective)
    callbacks = [on_trial] if on_trial is not None else []
    while True:
        if budget_reached(study, spec.search.n_trials):
            return "budget"
        if should_stop():
            return "stopped"
        left = seconds_left(study, spec)
        if left is not None and left <= 0:
            return "timeout"
        if budget_taken(study, spec.search.n_trials):
            fail_stale_trials(study)
            if on_wait is not None:
                on_wait(study)
            time.sleep(wait_seconds)
            continue
        try:
            study.optimize(objective, n_trials=1, catch=(SurplusTrial,), callbacks=callbacks)
            failures = 0
        except (KeyboardInterrupt, SystemExit, TrainingCancelled):
            raise
        except Exception as error:  # noqa: BLE001 - a broken trial is recorded by Optuna as FAIL
            failures += 1
            if failures >= max_consecutive_failures:
                raise SearchError(f"{failures} trials in a row failed; last: "
                                  f"{type(error).__name__}: {error}") from error
