"""Benchmark the search: does warm-started TPE find better plans, sooner, than the alternatives?

    python bench/search_quality.py [--quick] [--trials N] [--epochs E] [--seeds S]

On a cifar_resnet20 trained on the built-in digits (16x16), for each target
(50% and 25% of the baseline FLOPs, 50% of the baseline CPU latency), with the
same trial budget and the same fine-tune per trial:

  (a) TPE warm-started from attention + PLS (the plans ``search.seeding`` enqueues),
  (b) TPE cold (nothing enqueued),
  (c) GP (nothing enqueued),
  (d) random search,
  (e) uniform L1-magnitude pruning at the target (one plan),
  (f) Torch-Pruning's global magnitude pruning (``BasePruner(global_pruning=True)``,
      ``GroupMagnitudeImportance``), pruning ratio bisected to the target (one plan).

Rows (a)-(d) are wired as a real job is (``workers/prepare.py`` and
``workers/context.py``): same spec, baseline metrics, space, objective and
``run_trials``, a temp-file SQLite Optuna storage per study; every search
chooses the channels a group loses by L1 magnitude (a job's default
``search.channel_importance``; ``--channels scores``: by attention scores), so
rows (a)-(d) differ only in the sampler and the enqueued plans. Rows (e) and
(f) get the same fine-tune as one trial. The uniform ratio of (e) and the
pruning ratio of (f) are bisected to the largest that meets the target as
measured (FLOPs, or CPU latency, timed side by side with the baseline).

Printed per target: validation accuracy of the best feasible plan (what the
search maximises), test accuracy of that plan (re-pruned and re-fine-tuned with
the trial's seed), its FLOPs and latency ratios, blocks dropped, feasible
trials, and the number of trials each search needed to come within 0.5 points
of its own final best (``to best``) and of random search's final best
(``to (d)``). With ``--seeds S`` every search and fine-tune is repeated for
seeds 0..S-1 (same baseline and scores) and the mean is printed.
Never part of the test suite.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
import torch_pruning as tp
from torch import nn

from core.spec import JobSpec
from core.trial import TrialRecord, is_feasible
from models.datasets import DataSplits, load_dataset
from models.groups import final_classifier
from models.importance import (
    ImportanceScores,
    ScoreCache,
    ScoreImportance,
    cached_score,
    dataset_identity,
)
from models.measure import latency_against, measure_model
from models.plan import PrunePlan, apply_plan, prunable_groups, removable_blocks
from models.train import TrainConfig, evaluate, fine_tune, train_baseline
from search.constraints import active_limits, violations
from search.costs import LatencyCache
from search.objective import Objective, SearchContext, measure_baseline
from search.result import FinishedTrial, best_feasible_trials
from search.seeding import PlanProbe, seed_plans, target_ratio
from search.space import SearchSpace
from search.storage import open_storage, silence_optuna_logs
from search.study import WARM_START_ATTR, enqueue_plans, open_study, run_trials

ARCH = "cifar_resnet20"
IMAGE_SIZE = 16
TARGETS = (("flops 50%", {"max_flops_ratio": 0.5}),
           ("flops 25%", {"max_flops_ratio": 0.25}),
           ("latency 50%", {"max_latency_ratio": 0.5}))
SEARCHES = (("(a) TPE warm", "tpe", True), ("(b) TPE cold", "tpe", False),
            ("(c) GP", "gp", False), ("(d) random", "random", False))
WITHIN = 0.005  # "within 0.5 points"


@dataclass
class Setup:
    """The trained baseline and everything a job computes once from it."""

    model: nn.Module
    splits: DataSplits
    baseline: dict[str, Any]
    scores: dict[str, ImportanceScores]
    groups: list
    blocks: list
    channels: str = "l1"  # which channels a group loses in rows (a)-(d): l1 | scores


@dataclass
class Outcome:
    """One row, one seed."""

    val: float | None = None
    test: float | None = None
    flops_ratio: float | None = None
    latency_ratio: float | None = None
    dropped: int = 0
    feasible: int = 0
    trials: int = 0
    curve: list[float | None] = field(default_factory=list)  # best feasible so far
    best_from: str = ""  # the best trial's number and warm-start label
    log: list[dict[str, Any]] = field(default_factory=list)  # every trial, for --dump
    seconds: float = 0.0


def make_spec(constraints: dict[str, float], sampler: str, trials: int, epochs: int,
              seed: int) -> JobSpec:
    return JobSpec.model_validate({
        "name": "search-quality", "model": {"arch": ARCH},
        "dataset": {"name": "digits", "image_size": IMAGE_SIZE},
        "objective": {"mode": "constrained", "constraints": constraints},
        "latency": {"device": "cpu"},
        "search": {"sampler": sampler, "n_trials": trials, "warm_start": ["attention", "pls"]},
        "fine_tune": {"trial_epochs": epochs}, "seed": seed,
    })


def prepare(spec: JobSpec, baseline_epochs: int, cache_dir: Path) -> Setup:
    """Baseline, its metrics and importance scores, as ``workers/prepare.py`` makes them."""
    splits = load_dataset("digits", IMAGE_SIZE, seed=0)
    config = TrainConfig(epochs=baseline_epochs,
                         learning_rate=max(spec.fine_tune.learning_rate, 0.05),
                         batch_size=spec.fine_tune.batch_size, seed=0)
    model = train_baseline(ARCH, {}, splits, config, eval_split=None)
    baseline = measure_baseline(model, splits, spec)
    example = splits.example_input()
    groups = prunable_groups(model, example, round_to=spec.channel_multiple("cpu"),
                             min_keep_ratio=spec.search.min_keep_ratio)
    blocks = removable_blocks(model, example)
    cache = ScoreCache(cache_dir)
    scores: dict[str, ImportanceScores] = {
        method: cached_score(cache, model, splits, method,
                             dataset_identity("digits", IMAGE_SIZE, 0), groups, blocks)
        for method in spec.search.warm_start}
    return Setup(model, splits, baseline, scores, groups, blocks)


def context_for(setup: Setup, spec: JobSpec) -> SearchContext:
    """As ``workers/context.py``: L1 magnitude picks the channels, as a job's default
    ``search.channel_importance`` does (``--channels scores``: the first warm-start
    scorer's scores instead)."""
    scores = setup.scores[spec.search.warm_start[0]]
    factory = None if setup.channels == "l1" else (
        lambda copy_: ScoreImportance(copy_, scores))
    return SearchContext(spec=spec, model=setup.model, splits=setup.splits,
                         space=SearchSpace.from_spec(setup.groups, setup.blocks, spec.search,
                                                     round_to=spec.channel_multiple("cpu")),
                         baseline=dict(setup.baseline), importance_factory=factory)


def tune_and_score(model: nn.Module, setup: Setup, spec: JobSpec, seed: int) -> tuple[float,
                                                                                       float]:
    """The objective's fine-tune (same settings and seed), then val and test accuracy."""
    fine_tune(model, setup.splits, spec.fine_tune.trial_epochs, eval_split=None, seed=seed,
              **spec.fine_tune.training_settings())
    return evaluate(model, setup.splits, "val"), evaluate(model, setup.splits, "test")


def _ratios(model: nn.Module, setup: Setup, spec: JobSpec) -> dict[str, float]:
    """FLOPs and latency ratios, latency timed side by side with the baseline as trials do."""
    cost = measure_model(model, setup.splits.input_shape, "cpu", spec.latency.batch_size, 0,
                   3).to_dict()
    cost.update(latency_against(setup.model, model, setup.splits.input_shape, "cpu",
                                setup.baseline["latency_ms"], spec.latency.batch_size,
                                spec.latency.warmup, spec.latency.runs))
    cost["flops"] = cost["macs"]
    limits = active_limits(spec.objective.constraints, setup.baseline)
    return {"flops": cost["flops"] / setup.baseline["flops"],
            "latency": cost["latency_ms"] / setup.baseline["latency_ms"],
            "feasible": float(is_feasible(violations(limits, cost)))}


def run_search(setup: Setup, spec: JobSpec, warm: bool, folder: Path) -> Outcome:
    """One study, wired as a job: open, (enqueue), ``run_trials`` with the real objective."""
    started = time.perf_counter()
    context = context_for(setup, spec)
    storage = open_storage(f"sqlite:///{folder / 'optuna.db'}")
    name = f"{spec.search.sampler}-{'warm' if warm else 'cold'}-{spec.seed}-{time.time_ns()}"
    study = open_study(storage, name, spec)
    if warm:
        example = setup.splits.example_input()
        blocks = [b for b in setup.blocks if b.name in context.space.blocks]
        measured = LatencyCache()
        plans = seed_plans(setup.model, example, setup.groups, blocks, setup.scores,
                           target_ratio(spec.objective.constraints, setup.baseline,
                                        spec.latency),
                           round_to=context.space.plan_round_to(),
                           allow_block_removal=spec.search.allow_block_removal,
                           probe=PlanProbe(setup.model, example, setup.splits),
                           measured=measured)
        enqueue_plans(study, context.space, plans, measured)
    run_trials(study, Objective(context), spec)
    trials = sorted((t for t in study.get_trials(deepcopy=False)
                     if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.number)
    outcome = Outcome(trials=len(trials))
    best_so_far: float | None = None
    for trial in trials:
        record = TrialRecord.from_trial(trial)
        plan_dict = record.plan or {}
        outcome.log.append({"number": trial.number,
                            "label": trial.user_attrs.get(WARM_START_ATTR, ""),
                            "feasible": record.feasible, "accuracy": record.accuracy,
                            "flops": (record.flops or 0.0) / setup.baseline["flops"],
                            "latency": (record.latency_ms or 0.0) / setup.baseline["latency_ms"],
                            "dropped": len(plan_dict.get("drop_blocks", [])),
                            "drop_blocks": plan_dict.get("drop_blocks", []),
                            "keep": plan_dict.get("keep", {})})
        if record.feasible and record.accuracy is not None:
            outcome.feasible += 1
            best_so_far = max(best_so_far or record.accuracy, record.accuracy)
        outcome.curve.append(best_so_far)
    best = best_feasible_trials(study)
    if best:
        best_trial = FinishedTrial.of(best[0])
        best_record = best_trial.record
        plan = PrunePlan.from_dict(best_trial.plan)
        model = copy.deepcopy(setup.model)
        apply_plan(model, plan, setup.splits.example_input(),
                   importance=(context.importance_factory(model)
                               if context.importance_factory else None))
        _, outcome.test = tune_and_score(model, setup, spec, spec.seed + best_trial.number)
        outcome.val = best_record.accuracy
        outcome.flops_ratio = (best_record.flops or 0.0) / setup.baseline["flops"]
        outcome.latency_ratio = (best_record.latency_ms or 0.0) / setup.baseline["latency_ms"]
        outcome.dropped = len(plan.drop_blocks)
        outcome.best_from = f"#{best_trial.number} {best[0].user_attrs.get(WARM_START_ATTR, '')}"
    outcome.seconds = time.perf_counter() - started
    return outcome


def _largest_fitting(prune: Callable[[float], nn.Module], setup: Setup, spec: JobSpec,
                     low: float, high: float, grid: float = 0.05,
                     steps: int = 5) -> nn.Module | None:
    """The pruned network of the largest knob in [low, high] that meets the spec's limits
    as measured: scan down a grid, then bisect between the first fit and the grid point
    above it. (Torch-Pruning's global pruning is not monotone in its ratio near the
    extremes, so a plain bisection over the whole range can miss.)"""
    knobs = [high - index * grid for index in range(int((high - low) / grid) + 1)]
    for upper, knob in zip([None, *knobs], knobs, strict=False):
        candidate = prune(knob)
        if not _ratios(candidate, setup, spec)["feasible"]:
            continue
        best, low = candidate, knob
        if upper is None:
            return best
        high = upper
        for _ in range(steps):
            middle = (low + high) / 2
            candidate = prune(middle)
            if _ratios(candidate, setup, spec)["feasible"]:
                low, best = middle, candidate
            else:
                high = middle
        return best
    return None


def one_shot(setup: Setup, spec: JobSpec, prune: Callable[[float], nn.Module]) -> Outcome:
    """A single plan at the target (bisected), then the same fine-tune as one trial."""
    started = time.perf_counter()
    model = _largest_fitting(prune, setup, spec, spec.search.min_keep_ratio, 1.0)
    outcome = Outcome(trials=1)
    if model is not None:
        ratios = _ratios(model, setup, spec)
        outcome.flops_ratio, outcome.latency_ratio = ratios["flops"], ratios["latency"]
        outcome.val, outcome.test = tune_and_score(model, setup, spec, spec.seed)
        outcome.feasible = 1
        outcome.curve = [outcome.val]
    outcome.seconds = time.perf_counter() - started
    return outcome


def uniform_magnitude(setup: Setup, spec: JobSpec) -> Callable[[float], nn.Module]:
    def prune(keep_ratio: float) -> nn.Module:
        plan = PrunePlan.uniform(setup.groups, keep_ratio, spec.channel_multiple("cpu"),
                                 spec.search.min_keep_ratio)
        return apply_plan(copy.deepcopy(setup.model), plan, setup.splits.example_input())
    return prune


def torch_pruning_global(setup: Setup, spec: JobSpec) -> Callable[[float], nn.Module]:
    def prune(keep_ratio: float) -> nn.Module:
        model = copy.deepcopy(setup.model).eval()
        pruner = tp.pruner.BasePruner(
            model, setup.splits.example_input(),
            importance=tp.importance.GroupMagnitudeImportance(), global_pruning=True,
            pruning_ratio=1.0 - keep_ratio,
            max_pruning_ratio=1.0 - spec.search.min_keep_ratio,
            ignored_layers=[final_classifier(model)], round_to=spec.channel_multiple("cpu"))
        pruner.step()
        return model
    return prune


def trials_to(curve: list[float | None], level: float | None) -> int | None:
    """1-based number of the first trial whose best-so-far is within 0.5 points of ``level``."""
    if level is None:
        return None
    for number, best in enumerate(curve, start=1):
        if best is not None and best >= level - WITHIN:
            return number
    return None


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.mean(known) if len(known) == len(values) and known else None


def _fmt(value: float | None, scale: float = 100.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def report(label: str, rows: dict[str, list[Outcome]], trials: int) -> None:
    """The table of one target (means over seeds) and its verdict line."""
    random_best = [o.curve[-1] if o.curve else None for o in rows["(d) random"]]
    print(f"\n== {label} (budget {trials} trials; mean over {len(random_best)} seed(s)) ==")
    print(f"{'row':<16}{'val %':>7}{'test %':>8}{'FLOPs':>7}{'lat':>6}{'drop':>5}"
          f"{'feas':>6}{'to best':>8}{'to (d)':>7}  {'best trial':<18}{'val % per seed':<16}"
          f"{'s':>5}")
    summary: dict[str, tuple[float | None, float | None]] = {}
    for name, outcomes in rows.items():
        to_best = _mean([_as_float(trials_to(o.curve, o.curve[-1] if o.curve else None))
                         for o in outcomes])
        to_random = _mean([_as_float(trials_to(o.curve, best))
                           for o, best in zip(outcomes, random_best, strict=True)])
        val = _mean([o.val for o in outcomes])
        summary[name] = (val, to_best)
        per_seed = " ".join(_fmt(o.val) for o in outcomes) if len(outcomes) > 1 else ""
        print(f"{name:<16}{_fmt(val):>7}{_fmt(_mean([o.test for o in outcomes])):>8}"
              f"{_fmt(_mean([o.flops_ratio for o in outcomes]), 1, 2):>7}"
              f"{_fmt(_mean([o.latency_ratio for o in outcomes]), 1, 2):>6}"
              f"{statistics.mean(o.dropped for o in outcomes):>5.1f}"
              f"{statistics.mean(o.feasible for o in outcomes):>6.1f}"
              f"{_fmt(to_best, 1):>8}{_fmt(to_random, 1):>7}  {outcomes[0].best_from:<18}"
              f"{per_seed:<16}{statistics.mean(o.seconds for o in outcomes):>5.0f}")
    warm_val, warm_n = summary["(a) TPE warm"]
    beaten = [name for name, (val, _) in summary.items()
              if name != "(a) TPE warm" and val is not None
              and (warm_val is None or val > warm_val + 1e-9)]
    random_n = summary["(d) random"][1]
    fast = warm_n is not None and random_n is not None and warm_n <= random_n / 2
    quality = ("matches or beats every row" if not beaten
               else "is beaten by " + ", ".join(beaten))
    print(f"verdict {label}: (a) {quality}; {'reaches' if fast else 'does NOT reach'} its best "
          f"in <= half the trials of (d) ({_fmt(warm_n, 1)} vs {_fmt(random_n, 1)}): "
          f"{'GOAL MET' if fast and not beaten else 'goal not met'}")


def _as_float(value: int | None) -> float | None:
    return None if value is None else float(value)


def _scratch_folder() -> str | None:
    """RAM-backed when available: SQLite commits on a busy disk cost more than a trial's
    measurements."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small budget, one target")
    parser.add_argument("--trials", type=int, default=None, help="trials per search (20)")
    parser.add_argument("--epochs", type=int, default=None, help="fine-tune epochs per trial (2)")
    parser.add_argument("--seeds", type=int, default=1, help="search and fine-tune seeds")
    parser.add_argument("--baseline-epochs", type=int, default=15)
    parser.add_argument("--targets", default=None,
                        help="comma-separated target indices (0: flops 50%%, 1: flops 25%%, "
                             "2: latency 50%%)")
    parser.add_argument("--channels", choices=("scores", "l1"), default="l1",
                        help="which channels a group loses in rows (a)-(d): L1 magnitude "
                             "(a job's default) or the first warm-start scorer's")
    parser.add_argument("--dump", default=None, help="write every trial of every search as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    silence_optuna_logs()
    trials = args.trials or (8 if args.quick else 20)
    epochs = args.epochs or (1 if args.quick else 2)
    chosen = ([int(i) for i in args.targets.split(",")] if args.targets
              else ([0] if args.quick else list(range(len(TARGETS)))))
    started = time.perf_counter()
    dump: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=_scratch_folder()) as folder:
        work = Path(folder)
        setup = prepare(make_spec(TARGETS[0][1], "tpe", trials, epochs, 0),
                        args.baseline_epochs, work / "scores")
        setup.channels = args.channels
        print(f"baseline {ARCH} digits {IMAGE_SIZE}x{IMAGE_SIZE}: val "
              f"{setup.baseline['accuracy']:.1%}, test "
              f"{evaluate(setup.model, setup.splits, 'test'):.1%}, "
              f"{setup.baseline['flops']:.3g} MACs, {setup.baseline['latency_ms']:.3f} ms CPU; "
              f"{trials} trials x {epochs} fine-tune epochs; channels of (a)-(d) chosen by "
              f"{args.channels}; prepared in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        for index in chosen:
            label, constraints = TARGETS[index]
            rows: dict[str, list[Outcome]] = {}
            for seed in range(args.seeds):
                for name, sampler, warm in SEARCHES:
                    spec = make_spec(constraints, sampler, trials, epochs, seed)
                    rows.setdefault(name, []).append(run_search(setup, spec, warm, work))
                spec = make_spec(constraints, "tpe", trials, epochs, seed)
                rows.setdefault("(e) uniform L1", []).append(
                    one_shot(setup, spec, uniform_magnitude(setup, spec)))
                rows.setdefault("(f) TP global", []).append(
                    one_shot(setup, spec, torch_pruning_global(setup, spec)))
            report(label, rows, trials)
            dump[label] = {name: [o.log for o in outcomes] for name, outcomes in rows.items()}
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.dump:
        Path(args.dump).write_text(json.dumps(dump, indent=1))


if __name__ == "__main__":
    main()
