"""Exactly ``n_trials`` finished trials, however many processes share a study.

Optuna numbers trials atomically in the storage. A trial runs only when fewer
than ``n_trials`` trials with a lower number are finished, running or waiting;
otherwise it is surplus: it ends at once, marked FAIL with the user attribute
``surplus`` (hidden from users), and never counts. Finished = COMPLETE or
PRUNED. A trial whose worker died is failed by the heartbeat (or, when it died
before the trial's first heartbeat, by ``search.stale``) and re-queued under a
new number by Optuna's retry callback, so nothing is lost or counted twice.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from core.errors import TopiaryError
from search.stale import fail_ownerless_trials

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
SURPLUS_ATTR = "surplus"


class SurplusTrial(TopiaryError):
    """Raised inside the objective when the study already has its trials."""

    code = "surplus_trial"


def is_surplus(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get(SURPLUS_ATTR))


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def claim_trial_slot(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> None:
    """Let this trial run, or mark it surplus and stop this process's loop.

    Raises:
        SurplusTrial: the budget is already taken by lower-numbered trials.
    """
    ahead = sum(1 for other in study.get_trials(deepcopy=False, states=COUNTED)
                if other.number < trial.number)
    if ahead >= n_trials:
        trial.set_user_attr(SURPLUS_ATTR, True)
        study.stop()
        raise SurplusTrial(f"trial {trial.number} not needed: {n_trials} trials already taken")


def budget_reached(study: optuna.Study, n_trials: int) -> bool:
    return finished_count(study) >= n_trials


def budget_taken(study: optuna.Study, n_trials: int) -> bool:
    """Every slot is finished or held by another process's running trial: a new
    trial would be surplus, so wait for those to finish (or to go stale).

    Waiting trials do not count here: they are what this process should run next
    (a warm-start plan, or the retry of a trial whose worker died).
    """
    if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        return False
    held = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return len(study.get_trials(deepcopy=False, states=held)) >= n_trials


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Fail (and, through the retry callback, re-queue) trials whose worker died.

    Optuna does this when a trial starts; a process that is waiting for the
    last trials to finish must do it itself or it would wait for a dead one.
    Optuna leaves a trial that never had a heartbeat; ``search.stale`` ends those.

    Returns:
        The numbers of the trials without an owner that this process failed.
    """
    optuna.storages.fail_stale_trials(study)
    return fail_ownerless_trials(study)
