"""The cost model: one latency per network for seeding and trials, near misses re-timed."""

from __future__ import annotations

import copy

import optuna
import pytest
import torch
from torch import nn

from core.trial import TrialRecord
from models.architectures import build_model
from models.plan import PrunePlan, apply_plan
from search.constraints import Limit
from search.costs import (
    RETIME_WITHIN,
    Aim,
    CostModel,
    KnownLatency,
    LatencyCache,
)
from search.fitting import MEASURED_MARGIN
from tests.search_tests.conftest import ScriptedTimer

INPUT = (3, 16, 16)
LATENCY_LIMIT = (Limit("max_latency_ms", "latency_ms", 1.0),)


@pytest.fixture(scope="module")
def network() -> tuple[nn.Module, nn.Module]:
    """The unpruned network and one pruned copy."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("cifar_resnet20").eval()
    x = torch.zeros(1, *INPUT)
    return model, apply_plan(copy.deepcopy(model), PrunePlan(drop_blocks=["layer1.0"]), x)


def _timer(model: nn.Module, timings: list[float]) -> ScriptedTimer:
    """Side by side with ``model`` (recorded at 1 ms), as a trial times."""
    return ScriptedTimer(model, INPUT, "cpu", 1.0, timings=list(timings))


def test_a_latency_timed_while_seeding_is_what_the_trial_of_that_network_records(
        tmp_path, network) -> None:  # type: ignore[no-untyped-def]
    model, pruned = network
    seeding = CostModel(_timer(model, [0.9]), Aim(LATENCY_LIMIT, MEASURED_MARGIN, RETIME_WITHIN))
    seeded = seeding.limited_costs(pruned)
    shared = LatencyCache()
    shared.put(seeded["arch_fingerprint"], seeded)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    shared.share(optuna.create_study(storage=storage, study_name="job"))

    # Another worker process: its own cache, the study from the storage, no timing to give.
    study = optuna.load_study(study_name="job", storage=storage)
    timer = _timer(model, [])
    trial = CostModel(timer, Aim(LATENCY_LIMIT), LatencyCache())
    record = trial.trial_costs(copy.deepcopy(pruned), study, side_by_side=True)

    assert record["arch_fingerprint"] == seeded["arch_fingerprint"]
    assert (record["latency_ms"], record["latency_p90_ms"]) == (0.9, 1.8)
    assert record["latency_reused"] and record["latency_seeded"]
    assert not record["latency_retimed"]  # a known latency is not timed again
    assert record["flops"] == seeded["flops"] and record["memory_mb"] > 0


@pytest.mark.parametrize(("timings", "kept", "left"), [
    ([1.05, 0.9], 0.9, 0),   # a near miss: timed once more, the faster timing stands
    ([1.05, 1.2], 1.05, 0),  # slower the second time: the first timing stands
    ([1.5, 0.5], 1.5, 1),    # a far miss is not noise: not timed again
    ([0.9, 0.5], 0.9, 1),    # on its aim at once: timed once
])
def test_seeding_times_a_near_miss_once_more_and_a_far_miss_not(
        network, timings, kept, left) -> None:  # type: ignore[no-untyped-def]
    model, pruned = network
    timer = _timer(model, timings)
    costs = CostModel(timer, Aim(LATENCY_LIMIT, MEASURED_MARGIN, RETIME_WITHIN))

    record = costs.limited_costs(pruned)

    assert record["latency_ms"] == kept and len(timer.timings) == left
    assert record["latency_retimed"] is (left == 0)
    again = costs.limited_costs(copy.deepcopy(pruned))  # the same network: cached
    assert again["latency_ms"] == kept and again["latency_reused"]
    assert len(timer.timings) == left


def test_a_trial_times_any_miss_of_latency_alone_once_more(network) -> None:  # type: ignore[no-untyped-def]
    model, pruned = network
    study = optuna.create_study()
    timer = _timer(model, [5.0, 4.0])
    costs = CostModel(timer, Aim(LATENCY_LIMIT))

    record = costs.trial_costs(pruned, study, side_by_side=True)

    assert record["latency_retimed"] and record["latency_ms"] == 4.0 and timer.timings == []
    again = costs.trial_costs(copy.deepcopy(pruned), study, side_by_side=True)
    assert again["latency_reused"] and not again["latency_seeded"]
    assert not again["latency_retimed"] and again["latency_ms"] == 4.0

    timer = _timer(model, [5.0, 4.0])
    flops_too = CostModel(timer, Aim((*LATENCY_LIMIT, Limit("max_flops", "flops", 1.0))))
    record = flops_too.trial_costs(pruned, study, side_by_side=True)
    assert not record["latency_retimed"] and timer.timings == [4.0]  # a FLOPs miss is no noise


def test_the_study_knows_the_latency_of_a_finished_trial_before_a_seeded_one() -> None:
    study = optuna.create_study()

    def finished(trial: optuna.Trial) -> float:
        TrialRecord(arch_fingerprint="net", latency_ms=2.0, latency_p90_ms=3.0).store(trial)
        return 0.0

    study.optimize(finished, n_trials=1)
    seeded = LatencyCache()
    seeded.put("net", {"latency_ms": 9.0, "latency_p90_ms": 9.0})
    seeded.put("other", {"latency_ms": 1.0, "latency_p90_ms": 1.5})
    seeded.share(study)

    cache = LatencyCache()
    assert cache.get("net") is None  # without the study: only this process's timings
    assert cache.get("net", study) == KnownLatency(2.0, 3.0)
    assert cache.get("other", study) == KnownLatency(1.0, 1.5, seeded=True)
    assert cache.get("other") == KnownLatency(1.0, 1.5)  # kept here, as this process's now
    assert cache.get("unknown", study) is None
