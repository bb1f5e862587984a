from __future__ import annotations

import copy

import optuna
import pytest
import torch
from optuna.trial import TrialState
from pydantic import ValidationError

from core.spec import FineTuneSpec
from core.trial import TrialRecord
from models.importance import ImportanceScores
from models.plan import PrunePlan, apply_plan, prunable_groups, removable_blocks
from models.train import TrainConfig
from search.budget import is_surplus
from search.costs import LatencyCache, architecture_fingerprint
from search.objective import Objective
from search.result import search_result
from search.seeding import seed_plans, target_ratio
from search.storage import open_storage
from search.study import enqueue_plans, open_study, run_trials
from tests.search_tests.conftest import make_context, make_spec

RECORDED = {"plan", "accuracy", "latency_ms", "latency_p90_ms", "memory_mb", "flops", "params",
            "fine_tune_seconds"}


def _study(tmp_path, spec, name="job"):
    return open_study(open_storage(f"sqlite:///{tmp_path}/optuna.db"), name, spec)


def test_trials_record_every_metric_and_plans_over_a_counted_limit_are_projected(
        tmp_path, baseline, baseline_metrics) -> None:
    spec = make_spec(search={"n_trials": 3})
    context = make_context(baseline, baseline_metrics, spec)
    study = _study(tmp_path, spec)
    groups = {g.name: g.channels for g in context.space.groups}
    heavy = PrunePlan.unpruned()  # 100% of the FLOPs: breaks max_flops_ratio 0.6
    light = PrunePlan(keep={name: 8 for name in groups})
    enqueue_plans(study, context.space, [("unpruned", heavy), ("light", light)])
    assert run_trials(study, Objective(context), spec) == "budget"

    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3
    for trial in trials:
        assert RECORDED <= set(trial.user_attrs)
    first, second = trials[0], trials[1]
    assert first.user_attrs["warm_start"] == "unpruned"
    # Scaled onto the limit instead of discarded: measured, fine-tuned, feasible.
    record = TrialRecord.from_trial(first)
    assert record.projected is True and record.feasible is True
    assert record.sampled_plan == {"keep": {}, "drop_blocks": [], "round_to": 8}
    assert record.flops is not None and record.flops <= 0.6 * baseline_metrics["flops"]
    assert first.user_attrs["fine_tune_seconds"] > 0
    assert first.constraints["max_flops_ratio"] <= 0
    # A plan under the limit is widened onto it (constrained mode, counted limits only).
    widened = TrialRecord.from_trial(second)
    assert widened.feasible is True and widened.projected is True
    assert widened.sampled_plan is not None and widened.sampled_plan["keep"] == light.keep
    assert 0.45 * baseline_metrics["flops"] < widened.flops <= 0.6 * baseline_metrics["flops"]
    assert all(TrialRecord.from_trial(trial).fidelity == "short" for trial in trials)
    assert second.user_attrs["fine_tune_seconds"] > 0
    assert second.user_attrs["flops"] <= 0.6 * baseline_metrics["flops"]


def test_a_plan_measured_before_takes_that_trials_record_and_costs_no_fine_tune(
        tmp_path, baseline, baseline_metrics, monkeypatch) -> None:
    import search.objective

    spec = make_spec(search={"n_trials": 3}, objective={"constraints": {"max_flops_ratio": 0.9}})
    tuned: list[int] = []
    real_fine_tune = search.objective.fine_tune

    def counting_fine_tune(model, splits, epochs, **kwargs):
        tuned.append(epochs)
        return real_fine_tune(model, splits, epochs, **kwargs)

    monkeypatch.setattr(search.objective, "fine_tune", counting_fine_tune)
    context = make_context(baseline, baseline_metrics, spec)
    study = _study(tmp_path, spec)
    plan = PrunePlan(keep={g.name: 8 for g in context.space.groups})
    # Same parameters twice (as a sampler may propose them), then another plan: another
    # shape (a block dropped), so that widened onto the limit it stays another plan.
    params = context.space.params_for(plan.keep, [])
    study.enqueue_trial(params)
    study.enqueue_trial(params, skip_if_exists=False)
    study.enqueue_trial(context.space.params_for(plan.keep, ["layer3.2"]))
    run_trials(study, Objective(context), spec)
    first, second, third = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(tuned) == 2  # the first and the third plan, not the repeat
    assert first.user_attrs["latency_reused"] is False and "duplicate_of" not in first.user_attrs
    assert second.user_attrs["duplicate_of"] == first.number
    assert second.user_attrs["fine_tune_seconds"] == 0.0
    for name in ("plan", "accuracy", "latency_ms", "flops", "arch_fingerprint"):
        assert second.user_attrs[name] == first.user_attrs[name]
    assert second.values == first.values and dict(second.constraints) == dict(first.constraints)
    assert "duplicate_of" not in third.user_attrs
    assert third.user_attrs["arch_fingerprint"] != first.user_attrs["arch_fingerprint"]


def test_weighted_mode_penalises_latency(tmp_path, baseline, baseline_metrics) -> None:
    spec = make_spec(objective={"mode": "weighted", "constraints": {},
                                "weights": {"latency": 1.0, "memory": 0.5}},
                     search={"n_trials": 1}, fine_tune={"trial_epochs": 0})
    context = make_context(baseline, baseline_metrics, spec)
    study = _study(tmp_path, spec)
    run_trials(study, Objective(context), spec)
    trial = study.trials[0]
    attrs = trial.user_attrs
    expected = (attrs["accuracy"] - attrs["latency_ms"] / baseline_metrics["latency_ms"]
                - 0.5 * attrs["memory_mb"] / baseline_metrics["memory_mb"])
    assert trial.value == pytest.approx(expected)


def test_pareto_mode_is_multi_objective_and_reports_a_front(
        tmp_path, baseline, baseline_metrics) -> None:
    spec = make_spec(objective={"mode": "pareto", "constraints": {}, "pareto_memory": True},
                     search={"n_trials": 3, "sampler": "nsga2"}, fine_tune={"trial_epochs": 0})
    context = make_context(baseline, baseline_metrics, spec)
    study = _study(tmp_path, spec)
    run_trials(study, Objective(context), spec)
    assert all(len(t.values) == 3 for t in study.get_trials(states=(TrialState.COMPLETE,)))
    result = search_result(study, spec)
    assert result.feasible and result.pareto
    accuracies = [s.values[0] for s in result.pareto]
    assert accuracies == sorted(accuracies, reverse=True) and result.best in result.pareto


def test_no_feasible_plan_names_the_closest_and_how_far_it_missed(
        tmp_path, baseline, baseline_metrics) -> None:
    spec = make_spec(objective={"constraints": {"max_params": 10}}, search={"n_trials": 2})
    context = make_context(baseline, baseline_metrics, spec)
    study = _study(tmp_path, spec)
    run_trials(study, Objective(context), spec)
    result = search_result(study, spec)
    assert not result.feasible and result.best is None and result.closest is not None
    assert "no plan met the constraints" in result.message
    assert f"trial {result.closest.number}" in result.message and "max_params by" in result.message
    assert all(t.user_attrs["fine_tune_seconds"] == 0 for t in study.trials)
    assert all(t.user_attrs["fidelity"] == "costs" for t in study.trials)


def test_median_pruner_stops_trials_early(tmp_path, baseline, baseline_metrics) -> None:
    spec = make_spec(search={"n_trials": 6, "trial_pruner": "median", "sampler": "random"},
                     objective={"constraints": {"max_flops_ratio": 1.0}},
                     fine_tune={"trial_epochs": 2})
    context = make_context(baseline, baseline_metrics, spec)
    study = _study(tmp_path, spec)
    run_trials(study, Objective(context), spec)
    states = [t.state for t in study.trials if not is_surplus(t)]
    assert len([s for s in states if s in (TrialState.COMPLETE, TrialState.PRUNED)]) == 6
    for trial in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)):
        assert trial.intermediate_values  # accuracy was reported after every epoch


@pytest.mark.parametrize("sampler", ["tpe", "gp", "nsga2", "random"])
def test_every_sampler_is_seeded(tmp_path, sampler: str) -> None:
    spec = make_spec(search={"sampler": sampler, "n_trials": 4})

    def proposals(name: str) -> list[dict]:
        study = _study(tmp_path, spec, name)
        study.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_int("y", 0, 9),
                       n_trials=4)
        return [t.params for t in study.trials]

    assert proposals("a") == proposals("b")


def test_time_budget_stops_the_search(tmp_path, baseline, baseline_metrics) -> None:
    spec = make_spec(search={"n_trials": 50, "timeout_minutes": 0.0001})
    context = make_context(baseline, baseline_metrics, spec)
    study = _study(tmp_path, spec)
    assert run_trials(study, Objective(context), spec) == "timeout"
    assert len(study.trials) <= 1


def test_should_stop_ends_the_loop_between_trials(tmp_path, baseline, baseline_metrics) -> None:
    spec = make_spec(search={"n_trials": 50})
    context = make_context(baseline, baseline_metrics, spec)
    study = _study(tmp_path, spec)
    calls = []
    reason = run_trials(study, Objective(context), spec,
                        should_stop=lambda: len(calls) >= 2,
                        on_trial=lambda s, t: calls.append(t.number))
    assert reason == "stopped" and len(study.trials) == 2
    assert isinstance(study, optuna.Study)


def test_a_plan_that_breaks_only_a_latency_limit_is_timed_twice(
        tmp_path, baseline, baseline_metrics) -> None:
    only_latency = make_spec(objective={"constraints": {"max_latency_ms": 1e-6}},
                             search={"n_trials": 1})
    also_flops = make_spec(objective={"constraints": {"max_latency_ms": 1e-6,
                                                      "max_flops_ratio": 0.01}},
                           search={"n_trials": 1})
    retimed = {}
    for name, spec in (("only_latency", only_latency), ("also_flops", also_flops)):
        study = _study(tmp_path, spec, name)
        run_trials(study, Objective(make_context(baseline, baseline_metrics, spec)), spec)
        [trial] = study.get_trials(states=(TrialState.COMPLETE,))
        assert TrialRecord.from_trial(trial).feasible is False
        retimed[name] = trial.user_attrs["latency_retimed"]
    # A second timing can rescue a plan only when latency alone stands in its way.
    assert retimed == {"only_latency": True, "also_flops": False}


def test_latency_limits_hold_when_the_baseline_was_timed_on_a_slower_machine(
        tmp_path, baseline, baseline_metrics) -> None:
    # The baseline's latency as if it had been timed while the machine was 10x slower
    # (a busy moment while preparing). Timed plainly, the unpruned network itself would
    # now pass "at most 50% of the baseline's latency"; side by side it cannot.
    slow_moment = {**baseline_metrics, "latency_ms": 10 * baseline_metrics["latency_ms"]}
    spec = make_spec(objective={"constraints": {"max_latency_ratio": 0.5}},
                     search={"n_trials": 1}, fine_tune={"trial_epochs": 0})
    context = make_context(baseline, slow_moment, spec)
    study = _study(tmp_path, spec)
    enqueue_plans(study, context.space, [("unpruned", PrunePlan.unpruned())])
    run_trials(study, Objective(context), spec)
    [trial] = study.get_trials(states=(TrialState.COMPLETE,))
    attrs = trial.user_attrs
    assert TrialRecord.from_trial(trial).feasible is False
    assert attrs["latency_raw_ms"] < 0.5 * slow_moment["latency_ms"]  # the trap
    assert 0.5 < attrs["latency_ratio"] < 2.0
    assert attrs["latency_ms"] == pytest.approx(attrs["latency_ratio"]
                                                * slow_moment["latency_ms"])


def test_fine_tune_amp_follows_the_device_unless_the_spec_turns_it_off() -> None:
    """Every training run of a job (baseline, trials, final) takes these settings."""
    default = make_spec().fine_tune.training_settings()
    off = make_spec(fine_tune={"amp": False, "label_smoothing": 0.1}).fine_tune.training_settings()
    assert default["amp"] is None
    assert off == {"learning_rate": 0.01, "batch_size": 64, "label_smoothing": 0.1, "amp": False,
                   "optimizer": "sgd", "weight_decay": 5e-4, "decay_norm_and_bias": False,
                   "warmup_epochs": 0.0, "reference_batch_size": 64, "channels_last": None}
    assert TrainConfig(epochs=1, device="cuda", **default).uses_amp() is True
    assert TrainConfig(epochs=1, device="cpu", **default).uses_amp() is False
    assert TrainConfig(epochs=1, device="cuda", **off).uses_amp() is False
    with pytest.raises(ValidationError, match="fine_tune.amp"):
        make_spec(fine_tune={"amp": "sometimes"})


def test_warm_start_plans_keep_the_latency_seeding_timed_them_with(
        tmp_path, baseline, baseline_metrics) -> None:
    spec = make_spec(objective={"constraints": {"max_latency_ratio": 0.7}},
                     search={"n_trials": 8}, fine_tune={"trial_epochs": 0})
    context = make_context(baseline, baseline_metrics, spec)
    x = baseline.splits.example_input()
    blocks = removable_blocks(baseline.model, x)
    groups = prunable_groups(baseline.model, x)
    # A scorer's plans drop blocks: their trials list keep counts the seeding plan leaves
    # out (groups inside dropped blocks), so only the network identifies them.
    scores = {"pls": ImportanceScores(
        "pls", {g.name: torch.arange(g.channels, dtype=torch.float32) for g in groups},
        {g.name: float(index) for index, g in enumerate(groups)},
        {b.name: float(index) for index, b in enumerate(blocks)}, 0.0)}
    measured = LatencyCache()
    plans = seed_plans(baseline.model, x, groups, blocks, scores,
                       target_ratio(spec.objective.constraints, baseline_metrics, spec.latency),
                       round_to=context.space.plan_round_to(), measured=measured)
    assert set(measured) == {architecture_fingerprint(apply_plan(
        copy.deepcopy(baseline.model), plan, x)) for _, plan in plans}
    assert any(plan.drop_blocks for _, plan in plans)
    study = _study(tmp_path, spec)
    queued = enqueue_plans(study, context.space, plans, measured)
    run_trials(study, Objective(context), spec)

    trials = study.get_trials(states=(TrialState.COMPLETE,))
    for trial in trials[:queued]:
        assert trial.user_attrs["latency_seeded"] is True
        seeded = measured.get(trial.user_attrs["arch_fingerprint"])
        assert seeded is not None and trial.user_attrs["latency_ms"] == seeded.latency_ms
        assert TrialRecord.from_trial(trial).feasible is True  # sized under the limit by it
    assert all(trial.user_attrs["latency_seeded"] is False for trial in trials[queued:])


def test_a_seeded_latency_of_another_plan_is_not_used(tmp_path, baseline,
                                                      baseline_metrics) -> None:
    spec = make_spec(objective={"constraints": {"max_latency_ms": 1e-6}},
                     search={"n_trials": 1}, fine_tune={"trial_epochs": 0})
    context = make_context(baseline, baseline_metrics, spec)
    study = _study(tmp_path, spec)
    plan = PrunePlan(keep={g.name: 8 for g in context.space.groups})
    another = LatencyCache()
    another.put("another network", {"latency_ms": 1e-7, "latency_p90_ms": 1e-7})
    enqueue_plans(study, context.space, [("keep 8", plan)], another)
    run_trials(study, Objective(context), spec)
    [trial] = study.get_trials(states=(TrialState.COMPLETE,))
    assert trial.user_attrs["latency_seeded"] is False
    assert TrialRecord.from_trial(trial).feasible is False  # timed for real: not in 1 ns


def test_a_trial_of_steps_is_scored_on_capped_validation_images_once(
        tmp_path, baseline, baseline_metrics, monkeypatch) -> None:
    import search.objective

    spec = make_spec(search={"n_trials": 1})
    spec = spec.model_copy(update={"fine_tune": FineTuneSpec(trial_steps=3,
                                                             trial_eval_images=40)})
    calls: list[dict] = []
    evaluated: list[int] = []
    real_fine_tune, real_evaluate = search.objective.fine_tune, search.objective.evaluate

    def recording_fine_tune(model, splits, epochs, **kwargs):
        history = real_fine_tune(model, splits, epochs, **kwargs)
        calls.append({"epochs": epochs, "steps": kwargs.get("steps"), "val": len(splits.val),
                      "history": history})
        return history

    def recording_evaluate(model, splits, split="val", *args, **kwargs):
        evaluated.append(len(getattr(splits, split)))
        return real_evaluate(model, splits, split, *args, **kwargs)

    monkeypatch.setattr(search.objective, "fine_tune", recording_fine_tune)
    monkeypatch.setattr(search.objective, "evaluate", recording_evaluate)
    context = make_context(baseline, baseline_metrics, spec)
    study = _study(tmp_path, spec)
    light = PrunePlan(keep={g.name: 4 for g in context.space.groups})
    enqueue_plans(study, context.space, [("light", light)])
    run_trials(study, Objective(context), spec)

    [trial] = study.get_trials(states=(TrialState.COMPLETE,))
    [call] = calls
    assert (call["epochs"], call["steps"], call["val"]) == (0, 3, 40)
    assert call["history"]["step"][-1] == 3
    # Scored right after pruning, then the fine-tune's own last evaluation is reused.
    assert evaluated == [40]
    assert trial.user_attrs["accuracy"] == call["history"]["val_accuracy"][-1]
