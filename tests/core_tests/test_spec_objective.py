"""objective.pick: which plan of a Pareto front a pareto job finalises, validated."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from core.spec import JobSpec


def _spec(objective: dict[str, Any]) -> JobSpec:
    return JobSpec.model_validate({"name": "t", "model": {"arch": "cifar_resnet20"},
                                   "dataset": {"name": "digits"}, "objective": objective})


def test_a_pareto_job_picks_the_knee_unless_told_otherwise() -> None:
    assert _spec({"mode": "pareto"}).objective.pick.kind == "knee"
    assert _spec({"mode": "pareto", "pick": "knee"}).objective.pick.kind == "knee"
    by_index = _spec({"mode": "pareto", "pick": {"index": 2}}).objective.pick
    assert (by_index.kind, by_index.index) == ("index", 2)
    by_limit = _spec({"mode": "pareto", "pick": {"limit": {"max_latency_ratio": 0.3}}})
    assert by_limit.objective.pick.kind == "limit"
    assert by_limit.objective.pick.limit is not None
    assert by_limit.objective.pick.limit.max_latency_ratio == 0.3


def test_a_stored_spec_validates_again_in_every_mode() -> None:
    for objective in ({"constraints": {"max_flops_ratio": 0.5}}, {"mode": "weighted"},
                      {"mode": "pareto", "pick": {"index": 1}}):
        spec = _spec(objective)
        assert JobSpec.model_validate(spec.model_dump(mode="json")) == spec


@pytest.mark.parametrize(("objective", "message"), [
    ({"mode": "pareto", "pick": "best"}, "pick must be 'knee'"),
    ({"mode": "pareto", "pick": {"index": -1}}, "greater than or equal to 0"),
    ({"mode": "pareto", "pick": {"limit": {}}}, "pick.limit needs at least one limit"),
    ({"mode": "pareto", "pick": {"index": 1, "limit": {"max_flops": 1e6}}},
     "by index or by limit, not both"),
    ({"mode": "pareto", "pick": {"limit": {"max_latency_ratio": 2}}}, "less than or equal"),
    ({"mode": "pareto", "pick": {"rank": 1}}, "Extra inputs are not permitted"),
    ({"mode": "weighted", "pick": {"index": 1}}, "it needs mode 'pareto'"),
])
def test_a_pick_that_makes_no_sense_is_refused_saying_why(objective: dict[str, Any],
                                                         message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _spec(objective)
