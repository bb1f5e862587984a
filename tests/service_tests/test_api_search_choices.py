"""A pareto pick or a multi-fidelity search that makes no sense is a 422 saying why."""

from __future__ import annotations

from typing import Any

import pytest

from tests.service_tests.conftest import Api, spec_json


@pytest.mark.parametrize(("overrides", "location", "message"), [
    ({"objective": {"mode": "pareto", "pick": {"index": 1, "limit": {"max_flops": 1e6}}}},
     "body.objective.pick", "by index or by limit, not both"),
    ({"objective": {"mode": "pareto", "pick": "best"}}, "body.objective.pick",
     "pick must be 'knee'"),
    ({"objective": {"mode": "weighted", "pick": {"index": 0}}}, "body.objective",
     "it needs mode 'pareto'"),
    ({"objective": {"mode": "pareto"}, "search": {"fidelity": {"mode": "multi"}}}, "body",
     "a pareto job has several objectives"),
])
def test_a_senseless_pick_or_fidelity_is_422_saying_why(api: Api, overrides: dict[str, Any],
                                                        location: str, message: str) -> None:
    response = api.client.post("/v1/jobs", json=spec_json(**overrides))
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert any(".".join(str(part) for part in error["loc"]) == location
               and message in error["msg"] for error in errors), errors


def test_a_pareto_pick_and_a_multi_fidelity_search_are_accepted(api: Api) -> None:
    pareto = api.client.post("/v1/jobs", json=spec_json(objective={
        "mode": "pareto", "pick": {"limit": {"max_latency_ratio": 0.4}}}))
    assert pareto.status_code == 201, pareto.json()
    assert pareto.json()["spec"]["objective"]["pick"]["limit"]["max_latency_ratio"] == 0.4
    multi = api.client.post("/v1/jobs", json=spec_json(search={
        "n_trials": 12, "fidelity": {"mode": "multi", "rerank": 2}}))
    assert multi.status_code == 201, multi.json()
    assert multi.json()["spec"]["search"]["fidelity"]["rerank"] == 2
