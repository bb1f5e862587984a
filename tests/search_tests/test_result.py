"""Feasible and best come from Optuna's constrained best_trial / best_trials."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.result import best_feasible_trials, search_result
from tests.search_tests.conftest import make_spec, study_of
from workers.progress import progress_of


def _trial(values: list[float], violation: float, label: str, *,
           state: TrialState = TrialState.COMPLETE) -> optuna.trial.FrozenTrial:
    attrs: dict[str, Any] = {"plan": {"keep": {"conv1": 8}, "label": label},
                             "accuracy": values[0],
                             "latency_ms": 1.0, "memory_mb": 1.0, "flops": 1.0, "params": 1.0,
                             # What older objectives also wrote; Optuna's constraints decide.
                             "feasible": True}
    finished = state == TrialState.COMPLETE
    return create_trial(state=state, values=values if finished else None,
                        params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                        user_attrs=attrs, constraints={"max_flops_ratio": violation})


def test_the_best_plan_is_optunas_best_feasible_trial(tmp_path: Path) -> None:
    study = study_of(tmp_path, ["maximize"],
                   _trial([0.99], 0.2, "too big"),  # the most accurate breaks a limit
                   _trial([0.90], -0.1, "fits"),
                   _trial([0.80], 0.0, "just fits"),
                   _trial([0.95], -0.5, "stopped", state=TrialState.PRUNED))
    spec = make_spec(search={"n_trials": 4})
    result = search_result(study, spec)
    assert result.feasible and result.best is not None
    assert result.best.number == study.best_trial.number == 1
    assert result.best.plan["label"] == "fits" and result.pareto == [result.best]
    progress, best = progress_of(study, spec)
    assert best is not None and (best["trial"], best["feasible"]) == (1, True)
    assert progress["trials_complete"] == 3 and progress["trials_pruned"] == 1


def test_nothing_feasible_names_the_closest_miss(tmp_path: Path) -> None:
    study = study_of(tmp_path, ["maximize"], _trial([0.99], 0.5, "far"),
                   _trial([0.50], 0.05, "close"))
    result = search_result(study, make_spec())
    assert not result.feasible and result.best is None and best_feasible_trials(study) == []
    assert result.closest is not None and result.closest.number == 1
    assert "max_flops_ratio by 5.0%" in result.message
    assert progress_of(study, make_spec())[1] is None


def test_the_pareto_front_is_optunas_feasible_front(tmp_path: Path) -> None:
    study = study_of(tmp_path, ["maximize", "minimize"],
                   _trial([0.99, 1.0], 0.3, "infeasible, dominates all"),
                   _trial([0.90, 3.0], -0.1, "accurate"),
                   _trial([0.80, 2.0], -0.1, "fast"),
                   _trial([0.70, 2.5], -0.1, "dominated by fast"))
    result = search_result(study, make_spec(objective={"mode": "pareto", "constraints": {}}))
    assert [trial.number for trial in result.pareto] == [1, 2]
    assert result.best is result.pareto[0]
    assert {t.number for t in study.best_trials} == {1, 2}
