"""A trial that fails for a passing reason (a latency agent away) is run again, never lost."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from core.errors import LatencyAgentUnavailableError
from core.spec import JobSpec
from search.study import RETRY_OF_ATTR, WARM_START_ATTR, SearchError, run_trials
from tests.support.specs import tiny_spec

AWAY = "latency agent 'edge' at http://127.0.0.1:9 did not answer for 120 s"


def _study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))


def test_a_trial_that_meets_an_absent_agent_is_queued_again() -> None:
    study = _study()
    study.enqueue_trial({"x": 7}, user_attrs={WARM_START_ATTR: "pls@0.5"})
    calls: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_int("x", 0, 100)
        calls.append(x)
        if len(calls) == 1:
            raise LatencyAgentUnavailableError(AWAY)
        return float(x)

    spec = JobSpec.model_validate(tiny_spec(search={"n_trials": 3}))
    assert run_trials(study, objective, spec) == "budget"
    failed = study.get_trials(states=(TrialState.FAIL,))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(failed) == 1 and len(complete) == 3
    retried = complete[0]
    assert retried.params == {"x": 7}
    assert retried.user_attrs == {WARM_START_ATTR: "pls@0.5", RETRY_OF_ATTR: failed[0].number}


def test_an_agent_that_stays_away_fails_the_search_naming_it_and_keeps_the_trial() -> None:
    study = _study()

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_int("x", 0, 100)
        raise LatencyAgentUnavailableError(AWAY)

    spec = JobSpec.model_validate(tiny_spec(search={"n_trials": 3}))
    with pytest.raises(SearchError, match="latency agent 'edge'"):
        run_trials(study, objective, spec, max_consecutive_failures=3)
    failed = study.get_trials(states=(TrialState.FAIL,))
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(failed) == 3
    # Every failure is the same plan, and it still waits to be run: nothing was lost.
    assert {trial.params["x"] for trial in failed} == {failed[0].params["x"]}
    assert [trial.system_attrs["fixed_params"] for trial in waiting] == [failed[0].params]
