"""Multi-fidelity trials: the adaptive-BatchNorm probe screens every plan, successive
halving gives the fine-tune only to the most promising, and the best few are re-ranked
by a longer fine-tune with two seeds before the final one."""

from __future__ import annotations

import copy
import statistics
from typing import Any

import pytest
import torch
from optuna.pruners import NopPruner, SuccessiveHalvingPruner
from optuna.trial import TrialState
from pydantic import ValidationError

from core.spec import JobSpec
from core.trial import TrialRecord, plan_key
from models.plan import PrunePlan, apply_plan
from models.train import evaluate
from search.final_timing import FinalTimer
from search.objective import PROBE_STEP, Objective
from search.rerank import RERANK_SEEDS, rerank
from search.rerank_weights import RerankWeights
from search.result import search_result
from search.storage import open_storage
from search.study import open_study, run_trials
from service.trials import TrialPublic
from tests.search_tests.conftest import make_context, make_spec
from workers.progress import progress_of

MULTI = {"mode": "multi", "reduction_factor": 2, "rerank": 2, "rerank_factor": 2}


def test_a_multi_fidelity_search_screens_fine_tunes_the_best_and_re_ranks_them(
        tmp_path, baseline, baseline_metrics) -> None:
    spec = make_spec(search={"n_trials": 8, "sampler": "random", "fidelity": MULTI})
    context = make_context(baseline, baseline_metrics, spec)
    study = open_study(open_storage(f"sqlite:///{tmp_path}/optuna.db"), "job", spec)
    assert isinstance(study.pruner, SuccessiveHalvingPruner)
    objective = Objective(context)
    assert run_trials(study, objective, spec) == "budget"

    trials = study.get_trials(deepcopy=False)
    records = {trial.number: TrialRecord.from_trial(trial) for trial in trials}
    screened = [t for t in trials if t.state == TrialState.PRUNED]
    tuned = [t for t in trials if t.state == TrialState.COMPLETE]
    assert screened and tuned, [t.state for t in trials]
    for trial in screened:  # judged by the probe alone: no fine-tune
        record = records[trial.number]
        assert record.fidelity == "probe" and record.accuracy_probe is not None
        assert record.accuracy is None and record.plan is not None
        assert list(trial.intermediate_values) == [PROBE_STEP]
        assert TrialPublic.from_trial(trial).fidelity == "probe"
    for trial in tuned:  # the probe first, then the fine-tune's epoch at PROBE_STEP + 1
        record = records[trial.number]
        assert record.fidelity == "short" and record.accuracy_probe is not None
        assert (record.fine_tune_seconds or 0) > 0
        assert sorted(trial.intermediate_values) == [PROBE_STEP, PROBE_STEP + 1]
        assert trial.intermediate_values[PROBE_STEP] == pytest.approx(record.accuracy_probe)

    added = rerank(study, objective).added
    assert len(added) == 2 and rerank(study, objective).added == []  # done once, not repeated
    best_short = sorted(tuned, key=lambda t: (-t.values[0], t.number))[:2]
    long = [TrialRecord.from_trial(study.trials[number]) for number in added]
    assert [record.rerank_of for record in long] == [t.number for t in best_short]
    for record, source in zip(long, best_short, strict=True):
        assert record.fidelity == "long" and record.plan == records[source.number].plan
        assert record.accuracy_seeds is not None and len(record.accuracy_seeds) == RERANK_SEEDS
        assert record.accuracy == pytest.approx(statistics.fmean(record.accuracy_seeds))
        assert record.feasible is True
    progress, best = progress_of(study, spec)  # re-ranks are not among the n_trials
    assert progress["trials_complete"] + progress["trials_pruned"] == 8
    assert best is not None and best["trial"] in added and best["fidelity"] == "long"
    result = search_result(study, spec)
    assert result.best is not None and result.best.number in added
    assert result.best.record.accuracy == max(record.accuracy or 0 for record in long)


def test_without_the_probe_screen_every_feasible_plan_is_fine_tuned(
        tmp_path, baseline, baseline_metrics) -> None:
    spec = make_spec(search={"n_trials": 6, "sampler": "random",
                             "fidelity": {**MULTI, "screen": "none"}})
    context = make_context(baseline, baseline_metrics, spec)
    study = open_study(open_storage(f"sqlite:///{tmp_path}/optuna.db"), "job", spec)
    objective = Objective(context)
    assert run_trials(study, objective, spec) == "budget"

    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6  # none screened out
    for trial in trials:
        record = TrialRecord.from_trial(trial)
        assert record.fidelity == "short" and record.accuracy_probe is None
        assert (record.fine_tune_seconds or 0) > 0
        assert PROBE_STEP not in trial.intermediate_values
    assert len(rerank(study, objective).added) == 2  # the re-rank is the same


def _spec(search: dict[str, Any], **sections: Any) -> JobSpec:
    return JobSpec.model_validate({"name": "t", "model": {"arch": "cifar_resnet20"},
                                   "dataset": {"name": "digits"}, "search": search,
                                   **sections})


@pytest.mark.parametrize(("sections", "message"), [
    ({"objective": {"mode": "pareto"}}, "a pareto job has several objectives"),
    ({"objective": {"mode": "weighted"}, "search": {"trial_pruner": "median"}},
     "leave search.trial_pruner at none"),
    ({"objective": {"mode": "weighted"}, "fine_tune": {"trial_epochs": 0}},
     "trial_epochs >= 1 or trial_steps"),
    ({"objective": {"mode": "weighted"}, "search": {"reduction_factor": 1}},
     "greater than or equal to 2"),
])
def test_a_multi_fidelity_search_that_cannot_run_is_refused_saying_why(
        sections: dict[str, Any], message: str) -> None:
    search = sections.pop("search", {})
    fidelity = {"mode": "multi", **{key: search.pop(key) for key in ["reduction_factor"]
                                    if key in search}}
    with pytest.raises(ValidationError, match=message):
        _spec({**search, "fidelity": fidelity}, **sections)
    assert _spec({"fidelity": {"mode": "multi"}},
                 objective={"mode": "weighted"}).search.fidelity.rerank == 3


def test_a_plan_measured_twice_is_re_ranked_once(tmp_path, baseline, baseline_metrics) -> None:
    spec = make_spec(search={"n_trials": 3, "fidelity": {**MULTI, "rerank": 3}})
    context = make_context(baseline, baseline_metrics, spec)
    study = open_study(open_storage(f"sqlite:///{tmp_path}/optuna.db"), "job", spec)
    narrow = PrunePlan(keep={g.name: 8 for g in context.space.groups})
    wide = PrunePlan(keep={g.name: 16 for g in context.space.groups})
    params = context.space.params_for(narrow.keep, [])
    study.enqueue_trial(params)
    study.enqueue_trial(params, skip_if_exists=False)  # proposed again, as samplers do
    study.enqueue_trial(context.space.params_for(wide.keep, []))
    objective = Objective(context)
    run_trials(study, objective, spec)
    first, repeat = study.trials[0], study.trials[1]
    assert first.state == TrialState.COMPLETE and repeat.state == TrialState.COMPLETE
    assert repeat.user_attrs["duplicate_of"] == 0

    # Three re-rank places, two plans: each plan once.
    added = rerank(study, objective).added
    plans = [plan_key(study.trials[number].user_attrs["plan"]) for number in added]
    assert plan_key(first.user_attrs["plan"]) in plans
    assert len(plans) == len(set(plans))


class ScriptedFinalTimer(FinalTimer):
    """The final timing's verdicts from a script, one ratio of the baseline per network
    timed, in order (this machine's noise would make which plan misses a matter of luck)."""

    def __init__(self, ratios: list[float], *args: Any) -> None:
        super().__init__(*args)
        self.ratios = ratios

    def network(self, network: torch.nn.Module, misses: Any,
                architecture: str | None = None) -> dict[str, Any]:
        ratio = self.ratios.pop(0)
        return {"latency_ms": ratio * self.baseline_latency_ms, "latency_ratio": ratio,
                "latency_p90_ms": ratio * self.baseline_latency_ms, "latency_retimed": False,
                "latency_runtime": "torch"}


def test_a_plan_that_would_fail_the_final_timing_is_not_re_ranked_and_the_next_takes_its_place(
        tmp_path, baseline, baseline_metrics) -> None:
    # Trials' one short timing against a loose limit: every plan passes it.
    spec = make_spec(objective={"constraints": {"max_latency_ratio": 0.98}},
                     search={"n_trials": 3, "fidelity": {**MULTI, "rerank": 2}})
    context = make_context(baseline, baseline_metrics, spec)
    study = open_study(open_storage(f"sqlite:///{tmp_path}/optuna.db"), "job", spec)
    # Every plan fine-tuned: which one the probe screen would stop depends on the tiny
    # baseline's probe losses, not on what this test is about.
    study.pruner = NopPruner()
    for ratio in (0.4, 0.55, 0.7):
        study.enqueue_trial(context.space.params_for(
            {g.name: g.keep_for_ratio(ratio) for g in context.space.groups}, []))
    objective = Objective(context)
    run_trials(study, objective, spec)
    tuned = [t for t in study.trials if t.state == TrialState.COMPLETE
             and TrialRecord.from_trial(t).feasible]
    assert len(tuned) == 3, [(t.state, t.constraints) for t in study.trials]
    best_first = [t.number for t in sorted(tuned, key=lambda t: (-t.values[0], t.number))]

    # As delivery will time them: the best plan misses, the next two pass.
    timer = ScriptedFinalTimer([0.99, 0.4, 0.45], spec, baseline.model,
                               baseline.splits.input_shape, "cpu",
                               float(baseline_metrics["latency_ms"]), tmp_path)
    outcome = rerank(study, objective, timer)
    assert timer.ratios == []
    assert list(outcome.skipped) == [best_first[0]]
    assert outcome.skipped[best_first[0]]["max_latency_ratio"] == pytest.approx(0.99 / 0.98 - 1)
    long = [TrialRecord.from_trial(study.trials[number]) for number in outcome.added]
    assert [record.rerank_of for record in long] == best_first[1:]
    for record, ratio in zip(long, [0.4, 0.45], strict=True):  # the final timing's latency
        assert record.latency_ratio == pytest.approx(ratio)
        assert record.latency_ms == pytest.approx(ratio * baseline_metrics["latency_ms"])
        assert record.violations == {"max_latency_ratio": pytest.approx(ratio / 0.98 - 1)}
    result = search_result(study, spec)
    assert result.best is not None and result.best.number in outcome.added

    # A worker that takes over re-times the skipped plan, and re-ranks nothing twice.
    again = ScriptedFinalTimer([0.99], spec, baseline.model, baseline.splits.input_shape,
                               "cpu", float(baseline_metrics["latency_ms"]), tmp_path)
    assert rerank(study, objective, again).added == [] and again.ratios == []


def test_the_re_rank_keeps_each_plans_better_seed_for_the_final_fine_tune(
        tmp_path, baseline, baseline_metrics) -> None:
    spec = make_spec(search={"n_trials": 2, "fidelity": {**MULTI, "rerank": 1}})
    context = make_context(baseline, baseline_metrics, spec)
    study = open_study(open_storage(f"sqlite:///{tmp_path}/optuna.db"), "job", spec)
    study.pruner = NopPruner()
    narrow = PrunePlan(keep={g.name: 6 for g in context.space.groups})
    wide = PrunePlan(keep={g.name: 12 for g in context.space.groups})
    for plan in (narrow, wide):
        study.enqueue_trial(context.space.params_for(plan.keep, []))
    objective = Objective(context)
    run_trials(study, objective, spec)
    weights = RerankWeights(tmp_path / "weights")
    (number,) = rerank(study, objective, weights=weights).added
    record = TrialRecord.from_trial(study.trials[number])
    assert record.accuracy_seeds is not None
    key = plan_key(record.plan)
    assert weights.accuracy(key) == max(record.accuracy_seeds)

    def pruned(plan: PrunePlan) -> torch.nn.Module:
        model = copy.deepcopy(baseline.model)
        apply_plan(model, plan, baseline.splits.example_input())
        return model

    # The freshly pruned network, given the kept weights, is the better seed's network:
    # it scores what that seed scored on the split the re-rank scored it on.
    model = pruned(PrunePlan.from_dict(record.plan))
    fresh = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    assert weights.restore(key, model)
    assert not all(torch.equal(tensor, fresh[name])
                   for name, tensor in model.state_dict().items())
    assert evaluate(model, objective.scored, "val", "cpu") == pytest.approx(
        max(record.accuracy_seeds), abs=1e-9)
    # Nothing kept for the other plan; weights that do not fit a network are not loaded.
    other = narrow if PrunePlan.from_dict(record.plan).keep == wide.keep else wide
    assert weights.accuracy(plan_key(other.to_dict())) is None
    assert not weights.restore(plan_key(other.to_dict()), pruned(other))
    misfiled = RerankWeights(tmp_path / "misfiled")
    misfiled.offer(plan_key(other.to_dict()), model, 1.0)
    misfit = pruned(other)
    untouched = {name: tensor.clone() for name, tensor in misfit.state_dict().items()}
    assert not misfiled.restore(plan_key(other.to_dict()), misfit)
    assert all(torch.equal(tensor, untouched[name])
               for name, tensor in misfit.state_dict().items())


def test_without_a_latency_limit_the_re_rank_times_nothing(tmp_path, baseline,
                                                           baseline_metrics) -> None:
    spec = make_spec(search={"n_trials": 2, "fidelity": {**MULTI, "rerank": 1}})
    context = make_context(baseline, baseline_metrics, spec)
    study = open_study(open_storage(f"sqlite:///{tmp_path}/optuna.db"), "job", spec)
    study.enqueue_trial(context.space.params_for({g.name: 4 for g in context.space.groups}, []))
    objective = Objective(context)
    run_trials(study, objective, spec)
    timer = ScriptedFinalTimer([], spec, baseline.model, baseline.splits.input_shape, "cpu",
                               float(baseline_metrics["latency_ms"]), tmp_path)
    outcome = rerank(study, objective, timer)  # an empty script fails if it is asked
    assert len(outcome.added) == 1 and outcome.skipped == {}
