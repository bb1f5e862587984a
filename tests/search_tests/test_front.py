"""Weighted and pareto jobs never finalise the unpruned plan; pareto jobs finalise the
knee of the front, or the plan ``objective.pick`` names (by index or by a limit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from core.trial import TrialRecord
from models import build_model, prunable_groups
from models.plan import removable_blocks
from search.delivery import feasible_ranked
from search.result import search_result
from search.seeding import seed_plans
from tests.search_tests.conftest import make_spec, study_of
from workers.progress import progress_of

UNPRUNED: dict[str, Any] = {"keep": {}, "drop_blocks": [], "round_to": 8}


def _plan(width: int) -> dict[str, Any]:
    return {"keep": {"conv1": width}, "drop_blocks": [], "round_to": 8}


def _trial(values: list[float], plan: dict[str, Any]) -> optuna.trial.FrozenTrial:
    record = TrialRecord(plan=plan, accuracy=values[0],
                         latency_ms=values[1] if len(values) > 1 else 1.0,
                         latency_p90_ms=1.0, memory_mb=1.0, flops=1.0, params=1.0,
                         violations={})
    return create_trial(state=TrialState.COMPLETE, values=values, params={"x": 0.5},
                        distributions={"x": FloatDistribution(0, 1)},
                        user_attrs=record.model_dump(exclude={"violations", "feasible"},
                                                     exclude_none=True))


def _pareto(**pick: Any) -> Any:
    objective: dict[str, Any] = {"mode": "pareto", "constraints": {}}
    if pick:
        objective["pick"] = pick["pick"]
    return make_spec(objective=objective)


#: A 2-objective front (accuracy up, latency down) and the unpruned plan above it all.
FRONT = [([0.99, 10.0], UNPRUNED),     # 0: the unpruned network, dominating trial 1
         ([0.95, 10.0], _plan(56)),    # 1: only the unpruned plan beats it
         ([0.93, 5.0], _plan(40)),     # 2: the knee
         ([0.80, 4.5], _plan(24)),     # 3
         ([0.50, 4.0], _plan(8)),      # 4: the cheapest
         ([0.70, 4.8], _plan(16))]     # 5: dominated by 3


def _frontstudy_of(tmp_path: Path) -> optuna.Study:
    return study_of(tmp_path, ["maximize", "minimize"],
                  *(_trial(values, plan) for values, plan in FRONT))


def test_weighted_mode_never_finalises_the_unpruned_plan(tmp_path: Path) -> None:
    study = study_of(tmp_path, ["maximize"], _trial([0.9], UNPRUNED), _trial([0.7], _plan(16)),
                   _trial([0.8], _plan(32)))
    spec = make_spec(objective={"mode": "weighted", "constraints": {}})
    assert study.best_trial.number == 0  # Optuna alone would deliver the unpruned network
    result = search_result(study, spec)
    assert result.best is not None and result.best.number == 2
    assert [trial.number for trial in feasible_ranked(study)] == [2, 1]
    assert progress_of(study, spec)[1]["trial"] == 2


def test_the_pareto_front_leaves_out_the_unpruned_plan_but_not_what_it_dominated(
        tmp_path: Path) -> None:
    study = _frontstudy_of(tmp_path)
    assert {trial.number for trial in study.best_trials} == {0, 2, 3, 4}
    result = search_result(study, _pareto())
    assert [trial.number for trial in result.pareto] == [1, 2, 3, 4]
    assert result.best is not None and result.best.number == 2
    assert "knee" in result.message


def test_a_pareto_jobs_best_so_far_is_the_plan_its_pick_would_finalise(
        tmp_path: Path) -> None:
    """What the job page and ``topiary status`` show while searching is what would be
    delivered now: the knee, or the plan within the pick's limit, not the front's most
    accurate plan (trial 1)."""
    study = _frontstudy_of(tmp_path)
    assert progress_of(study, _pareto())[1]["trial"] == 2
    baseline = {"latency_ms": 10.0, "memory_mb": 1.0, "flops": 1.0, "params": 1.0}
    limited = _pareto(pick={"limit": {"max_latency_ratio": 0.46}})
    assert progress_of(study, limited, baseline)[1]["trial"] == 3
    assert progress_of(study, _pareto(pick={"index": 0}))[1]["trial"] == 1


def test_a_study_of_nothing_but_the_unpruned_plan_has_nothing_to_finalise(
        tmp_path: Path) -> None:
    study = study_of(tmp_path, ["maximize", "minimize"], _trial([0.99, 10.0], UNPRUNED))
    result = search_result(study, _pareto())
    assert not result.feasible and result.best is None and result.closest is None
    assert "pruned anything" in result.message


def test_pick_by_index_counts_from_the_most_accurate_plan(tmp_path: Path) -> None:
    study = _frontstudy_of(tmp_path)
    first = search_result(study, _pareto(pick={"index": 0})).best
    assert first is not None and first.number == 1
    last = search_result(study, _pareto(pick={"index": 99}))
    assert last.best is not None and last.best.number == 4
    assert "past its end" in last.message


def test_pick_by_limit_is_the_most_accurate_plan_within_it(tmp_path: Path) -> None:
    study = _frontstudy_of(tmp_path)
    baseline = {"latency_ms": 10.0, "memory_mb": 1.0, "flops": 1.0, "params": 1.0}
    within = search_result(study, _pareto(pick={"limit": {"max_latency_ratio": 0.46}}),
                           baseline)
    assert within.best is not None and within.best.number == 3
    absolute = search_result(study, _pareto(pick={"limit": {"max_latency_ms": 4.9}}))
    assert absolute.best is not None and absolute.best.number == 3
    missed = search_result(study, _pareto(pick={"limit": {"max_latency_ms": 2.0}}))
    assert missed.best is not None and missed.best.number == 4  # the closest: 4.0 ms
    assert "no plan met it" in missed.message and "100.0%" in missed.message


def test_without_limits_seeding_enqueues_no_unpruned_plan() -> None:
    model = build_model("cifar_resnet20")
    x = torch.zeros(1, 3, 16, 16)
    plans = seed_plans(model, x, prunable_groups(model, x, round_to=8),
                       removable_blocks(model, x), {}, None, round_to=8)
    assert plans and not any(plan.is_unpruned() for _, plan in plans)
