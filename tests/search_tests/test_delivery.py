"""Which plan is delivered, how the final timing settles, and how a miss is stated."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState

from core.trial import TrialRecord
from models import prunable_groups
from models.architectures import build_model
from models.latency import LatencyResult
from models.plan import PrunePlan, removable_blocks
from search.delivery import MAX_FALLBACKS, MAX_NARROWINGS, Delivery, feasible_ranked
from search.final_timing import MAX_ROUNDS, MIN_ROUNDS, FinalTimer, stable_timing
from search.result import FinishedTrial
from search.space import SearchSpace
from tests.search_tests.conftest import make_spec, study_of

BASELINE = {"latency_ms": 2.0, "flops": 100.0, "params": 100.0, "memory_mb": 1.0}


def _result(median: float, fastest: float | None = None) -> LatencyResult:
    return LatencyResult(median_ms=median, p90_ms=1.5 * median, runs=20, batch_size=1,
                         device_type="cpu", device_name="cpu", threads=1, fastest_ms=fastest)


def _scripted(ratios: list[float]):
    script = list(ratios)

    def compare(runs: int) -> tuple[LatencyResult, LatencyResult]:
        return _result(1.0), _result(script.pop(0))

    return compare, script


def test_the_final_timing_stops_once_three_rounds_agree() -> None:
    compare, left = _scripted([0.7, 0.5, 0.505, 0.51, 0.9])
    timing = stable_timing(compare, 20)
    assert timing.rounds == 4 and left == [0.9]
    assert timing.ratio == pytest.approx(0.5075) and timing.runs == 80
    assert timing.record(2.0)["latency_ms"] == pytest.approx(2 * 0.5075)


def test_the_final_timing_is_bounded_when_it_never_settles() -> None:
    compare, left = _scripted([0.4, 0.6] * 10)
    timing = stable_timing(compare, 20)
    assert timing.rounds == MAX_ROUNDS >= MIN_ROUNDS and len(left) == 20 - MAX_ROUNDS
    assert timing.ratio == pytest.approx(0.5)


def _trial(number: int, accuracy: float, latency_ms: float, fingerprint: str) -> FinishedTrial:
    return FinishedTrial(number, [accuracy], TrialRecord(
        plan={"keep": {}}, accuracy=accuracy, latency_ms=latency_ms, arch_fingerprint=fingerprint,
        flops=10.0, params=10.0, memory_mb=0.5, violations={"max_latency_ratio": -0.1}))


def _delivery(*trials: FinishedTrial) -> Delivery:
    spec = make_spec(objective={"constraints": {"max_latency_ratio": 0.5, "max_flops_ratio": 0.5}})
    return Delivery(spec, BASELINE, list(trials))


def test_after_a_miss_the_next_plans_are_faster_ones_and_bounded() -> None:
    trials = [_trial(0, 0.99, 0.99, "a"), _trial(1, 0.98, 0.99, "same speed"),
              _trial(2, 0.97, 0.95, "a"), _trial(3, 0.96, 0.9, "b"), _trial(4, 0.9, 0.8, "c"),
              _trial(5, 0.8, 0.7, "d")]
    delivery = _delivery(*trials)
    tried = []
    while (trial := delivery.next_plan()) is not None:
        tried.append(trial.number)
        assert not delivery.judge(trial, {"latency_ms": 1.2, "flops": 10.0}, "architecture")
    # 1 records no lower latency than 0 and 2 is 0's architecture: neither is worth a try.
    assert tried == [0, 3, 4] and len(tried) == 1 + MAX_FALLBACKS
    assert delivery.tried() == [0, 3, 4]


def test_a_miss_is_stated_by_how_much_against_which_limit() -> None:
    first, second = _trial(0, 0.99, 0.99, "a"), _trial(1, 0.9, 0.9, "b")
    delivery = _delivery(first, second)
    # The first plan's network passes, its delivered file misses by 10%.
    assert delivery.judge(first, {"latency_ms": 0.9, "flops": 10.0}, "architecture")
    assert not delivery.judge(first, {"latency_ms": 1.1, "flops": 10.0, "latency_runs": 60},
                              "artifact")
    assert not delivery.judge(second, {"latency_ms": 1.3, "flops": 10.0}, "architecture")
    closest = delivery.closest()
    assert closest is not None and (closest.trial.number, closest.stage) == (0, "artifact")
    message = delivery.miss_message()
    assert "max_latency_ratio 0.5: delivered 0.55, 10.0% over" in message
    assert "max_flops_ratio" not in message and "trials 0, 1 tried" in message
    standings = delivery.standings(closest.record)
    assert [(s["name"], s["met"]) for s in standings] == [("max_latency_ratio", False),
                                                          ("max_flops_ratio", True)]


def test_a_timing_that_goes_on_is_judged_on_every_round() -> None:
    compare, _ = _scripted([0.6, 0.6, 0.6, 0.3, 0.3, 0.3, 0.3])
    first = stable_timing(compare, 20)
    assert (first.rounds, first.ratio) == (3, pytest.approx(0.6))
    both = stable_timing(compare, 20, earlier=first)
    # Three more rounds that agree; the median over all six, not the faster timing.
    assert both.rounds == 6 and both.ratio == pytest.approx(0.45) and both.runs == 120


def test_limits_are_judged_by_the_larger_of_the_median_and_fastest_ratios() -> None:
    # A busy machine: the unpruned network's passes, the longer ones, are interrupted more
    # often, so its median is inflated and the median ratio comes out too low.
    busy = stable_timing(lambda runs: (_result(4.0, fastest=1.0), _result(1.0, fastest=0.5)),
                         20)
    assert busy.ratio == pytest.approx(0.25) and busy.fastest_ratio == pytest.approx(0.5)
    record = busy.record(2.0)
    assert record["latency_ratio"] == pytest.approx(0.5) == record["latency_fastest_ratio"]
    assert record["latency_ms"] == pytest.approx(1.0)
    assert record["latency_median_ratio"] == pytest.approx(0.25)
    # Without a fastest pass (an agent's timing) the median ratio stands.
    agent = stable_timing(lambda runs: (_result(4.0), _result(1.0)), 20)
    assert agent.fastest_ratio is None and agent.verdict_ratio == pytest.approx(0.25)


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    model = build_model("cifar_resnet20", num_classes=10)
    x = torch.zeros(1, 3, 16, 16)
    spec = make_spec(search={"round_to": 4})
    return SearchSpace.from_spec(prunable_groups(model, x), removable_blocks(model, x),
                                 spec.search)


def _planned(space: SearchSpace, number: int) -> FinishedTrial:
    plan = space.scaled(PrunePlan.unpruned(), 0.75)
    return FinishedTrial(number, [0.9], TrialRecord(
        plan=plan.to_dict(), accuracy=0.9, latency_ms=0.95, arch_fingerprint="x",
        flops=10.0, params=10.0, memory_mb=0.5, violations={"max_latency_ratio": -0.05}))


def _widths(trial: FinishedTrial) -> dict[str, int]:
    return PrunePlan.from_dict(trial.plan).keep


def test_a_plan_that_misses_latency_by_noise_is_narrowed_onto_the_limit(space) -> None:
    best = _planned(space, 7)
    spec = make_spec(objective={"constraints": {"max_latency_ratio": 0.5, "max_flops_ratio": 0.5}})
    delivery = Delivery(spec, BASELINE, [best], space=space)
    assert delivery.next_plan() is best
    # Re-timed 2% over its latency limit (1.0 ms) and no other plan to try.
    assert not delivery.judge(best, {"latency_ms": 1.02, "flops": 10.0}, "architecture")
    narrowed = delivery.next_plan()
    assert narrowed is not None and narrowed.number == 7 and delivery.is_narrowed(narrowed)
    before, after = _widths(best), _widths(narrowed)
    assert all(after[name] <= width for name, width in before.items())
    assert sum(after.values()) < sum(before.values())
    groups = {group.name: group for group in space.groups}
    assert all(width % 4 == 0 or width == groups[name].channels for name, width in after.items())
    # Each narrowing starts from the closest plan so far and goes narrower, a bounded
    # number of times.
    widths = [sum(after.values())]
    trial = narrowed
    for _ in range(MAX_NARROWINGS - 1):
        assert not delivery.judge(trial, {"latency_ms": 1.01, "flops": 10.0}, "architecture")
        trial = delivery.next_plan()
        assert trial is not None and delivery.is_narrowed(trial)
        widths.append(sum(_widths(trial).values()))
    assert widths == sorted(widths, reverse=True) and len(set(widths)) == len(widths)
    assert not delivery.judge(trial, {"latency_ms": 1.005, "flops": 10.0}, "architecture")
    assert delivery.next_plan() is None
    assert not delivery.is_narrowed(best)


@pytest.mark.parametrize("record", [
    {"latency_ms": 1.2, "flops": 10.0},    # 20% over: the wrong plan, not noise
    {"latency_ms": 0.9, "flops": 60.0},    # a counted limit: never narrowed
])
def test_only_small_latency_misses_are_narrowed(space, record) -> None:
    best = _planned(space, 0)
    spec = make_spec(objective={"constraints": {"max_latency_ratio": 0.5, "max_flops_ratio": 0.5}})
    delivery = Delivery(spec, BASELINE, [best], space=space)
    assert not delivery.judge(delivery.next_plan(), record, "architecture")
    assert delivery.next_plan() is None
    # Without a space (nothing to narrow on) a small latency miss is final too.
    plain = Delivery(spec, BASELINE, [best])
    assert not plain.judge(best, {"latency_ms": 1.02, "flops": 10.0}, "architecture")
    assert plain.next_plan() is None


def test_the_ranked_plans_hold_each_plan_once_at_its_best_trial(tmp_path) -> None:
    def finished(plan: dict, accuracy: float) -> optuna.trial.FrozenTrial:
        return optuna.trial.create_trial(
            state=TrialState.COMPLETE, values=[accuracy],
            user_attrs={"plan": plan, "accuracy": accuracy, "fidelity": "short"},
            constraints={"max_flops_ratio": -0.1})

    wide, narrow = {"keep": {"conv1": 8}}, {"keep": {"conv1": 4}}
    # The wide plan measured twice (a repeat, or a re-rank of it), the narrow one once.
    study = study_of(tmp_path, ["maximize"], finished(wide, 0.80), finished(narrow, 0.85),
                     finished({"keep": {"conv1": 8}}, 0.90))
    ranked = feasible_ranked(study)
    assert [(trial.number, trial.plan) for trial in ranked] == [(2, wide), (1, narrow)]


def test_an_architecture_timed_again_goes_on_from_its_earlier_rounds(
        tmp_path, baseline, baseline_metrics) -> None:
    """The re-rank, delivery and (in eager PyTorch) the delivered model time one
    architecture up to three times: each goes on from the rounds before, judged on all."""
    spec = make_spec()
    timer = FinalTimer(spec, baseline.model, baseline.splits.input_shape, "cpu",
                       float(baseline_metrics["latency_ms"]), tmp_path)
    example = baseline.splits.example_input()
    space = SearchSpace.from_spec(prunable_groups(baseline.model, example),
                                  removable_blocks(baseline.model, example), spec.search)
    half, quarter = (space.to_plan({g.name: g.keep_for_ratio(ratio) for g in space.groups}, [])
                     for ratio in (0.5, 0.25))

    def never(record: dict) -> dict:
        return {}

    first = timer.plan(half, example, never).record["latency_runs"]
    assert MIN_ROUNDS * timer.runs <= first <= MAX_ROUNDS * timer.runs
    earlier = timer.timing(half.fingerprint())
    assert earlier is not None and earlier.runs == first
    again = timer.plan(half, example, never).record["latency_runs"]
    pooled = timer.timing(half.fingerprint())
    assert pooled is not None and pooled.timings[:earlier.rounds] == earlier.timings
    assert again == pooled.runs >= first + MIN_ROUNDS * timer.runs
    delivered = timer.delivered(timer.plan(half, example, never).model, tmp_path / "x.onnx",
                                lambda latency: False, half.fingerprint())
    assert delivered["latency_timed"] == "model"
    assert delivered["latency_runs"] >= again + MIN_ROUNDS * timer.runs
    other = timer.plan(quarter, example, never).record["latency_runs"]
    assert other <= MAX_ROUNDS * timer.runs  # another architecture starts afresh
    assert timer.timing(quarter.fingerprint()).runs == other  # type: ignore[union-attr]
