"""The search rows of ``bench/search_quality.py`` and what every row shares: the profile,
the prepared baseline, the final fine-tune; every fine-tune optimiser step counted
(the one-shot rows are ``bench/_search_oneshot.py``).

A search row is a job's PREPARING (warm-start plans enqueued), SEARCHING
(``run_trials`` with the real ``Objective``: multi-fidelity probe screen reported to
Optuna's SuccessiveHalvingPruner, short fine-tunes for the plans it promotes) and
FINALIZING (``search.rerank`` as ``workers/reranking.py`` runs it: with a latency
limit only plans whose networks pass the final timing are re-ranked; then
``search_result`` and ``Delivery`` over ``feasible_ranked`` as ``workers/finalize.py``
picks the plan, its network re-timed side by side by ``FinalTimer``, and the final
fine-tune with distillation from the unpruned network, going on from the re-rank's
weights of the plan when it has them, ``search.rerank_weights``). Only the ONNX export and the
file's timing are left out (the runtime is eager PyTorch: the delivered file is the
network already timed).

Steps are counted by wrapping the ``fine_tune`` that ``search.objective`` calls (trial
fine-tunes and re-rank fine-tunes), plus the final fine-tune's, which runs an exact
number of steps (``steps=``). A search stops starting trials once the next short
fine-tune would take its trial phase past ``search_steps`` less what the re-rank
will spend.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from torch import nn

import search.objective as objective_module
from core.limits import LIMIT_METRICS
from core.spec import JobSpec
from core.trial import TrialRecord, plan_key
from models import build_model
from models.checkpoints import load_weights, save_weights
from models.datasets import DataSplits, load_dataset
from models.importance import ImportanceScores, ScoreCache, cached_score, dataset_identity
from models.plan import PrunePlan, prunable_groups, removable_blocks
from models.train import TrainConfig, evaluate, fine_tune, train_baseline
from search.costs import COUNTED_METRICS, LatencyCache
from search.delivery import Delivery, feasible_ranked
from search.final_timing import FinalTimer
from search.objective import Objective, SearchContext, measure_baseline
from search.rerank import RERANK_SEEDS, rerank
from search.rerank_weights import RerankWeights
from search.result import deliverable_trials, search_result
from search.seeding import PlanProbe, seed_plans, target_ratio
from search.space import SearchSpace
from search.storage import open_storage
from search.study import WARM_START_ATTR, enqueue_plans, open_study, run_trials

DATA_ROOT = "/usr/share/datasets/fashion-mnist"
#: Baseline weights kept in git: hosts with other floating-point kernels train other
#: seed-0 networks (ResNet-56: 89.21%, 89.24%, 88.91% test on three hosts), and tables
#: from two baselines differ by as much as their rows do. With the weights here, every
#: host prunes the same network (metrics, latency and scores are still measured per host).
BASELINES = Path(__file__).parent / "baselines"
TARGETS = (("flops 50%", {"max_flops_ratio": 0.5}),
           ("flops 25%", {"max_flops_ratio": 0.25}),
           ("latency 50%", {"max_latency_ratio": 0.5}))
#: Limits seeding sizes plans to by measuring them (timing noise makes its plans vary).
MEASURED_LIMITS = frozenset(name for name, (metric, _) in LIMIT_METRICS.items()
                            if metric not in COUNTED_METRICS)
# name -> (sampler, warm-start scorers or None for a cold start); all multi-fidelity
SEARCHES = {"(a) TPE warm": ("tpe", ["attention", "pls"]),
            "(a-attn) TPE warm attention": ("tpe", ["attention"]),
            "(a-pls) TPE warm PLS": ("tpe", ["pls"]),
            "(b) TPE cold": ("tpe", None), "(c) GP": ("gp", None),
            "(d) random": ("random", None)}
ONE_SHOTS = ("(e) uniform L1", "(f) TP global")


@dataclass(frozen=True)
class Profile:
    """Everything a run of the benchmark is sized by."""

    name: str
    arch: str
    image_size: int
    train_images: int | None  # training split cut to its first N (None: all 51k)
    baseline_epochs: int
    trial_steps: int  # a trial's short fine-tune (fine_tune.trial_steps)
    search_steps: int  # a search row's short + re-rank fine-tunes, all together
    final_steps: int  # the final fine-tune of the chosen plan (every row)
    trial_eval_images: int  # validation images a trial is scored on
    seeds: tuple[int, ...]
    targets: tuple[int, ...]
    device: str = "cpu"
    batch_size: int = 64
    jobs: int = 2  # processes running units side by side
    deadline_minutes: float | None = None  # no unit starts after this
    rerank: int = 3  # search.fidelity.rerank: plans re-ranked
    rerank_factor: float = 3.0  # search.fidelity.rerank_factor: their fine-tune's length
    # The final fine-tune goes on from the re-rank's weights of its plan, as a job's does
    # (False: from the pruned weights, the ablation ``--fresh-final`` measures).
    continue_rerank: bool = True
    # search.fidelity.screen: "probe" screens plans before their short fine-tune, "none"
    # fine-tunes every feasible plan (the ablation ``--no-screen`` measures).
    screen: str = "probe"
    # Each seed's rows prune a baseline trained with that seed (False: every seed prunes
    # the seed-0 baseline), so the seeds' spread holds the baseline's too (the ablation
    # ``--baseline-per-seed`` runs).
    baseline_per_seed: bool = False

    def baseline_seed(self, seed: int) -> int:
        """The seed of the baseline that ``seed``'s rows prune."""
        return seed if self.baseline_per_seed else 0

    def baseline_seeds(self) -> tuple[int, ...]:
        return tuple(sorted({self.baseline_seed(seed) for seed in self.seeds}))

    def rerank_steps(self, spec: JobSpec) -> int:
        fidelity = spec.search.fidelity
        return fidelity.rerank * RERANK_SEEDS * math.ceil(self.trial_steps
                                                          * fidelity.rerank_factor)

    def max_trials(self) -> int:
        """A cap on trials (probe-screened and infeasible ones cost no steps)."""
        return 6 * max(1, self.search_steps // self.trial_steps) + 20


def make_spec(profile: Profile, constraints: dict[str, float], sampler: str,
              warm: list[str] | None, seed: int) -> JobSpec:
    return JobSpec.model_validate({
        "name": "search-quality", "model": {"arch": profile.arch},
        "dataset": {"name": "fashion_mnist", "image_size": profile.image_size,
                    "root": DATA_ROOT},
        "objective": {"mode": "constrained", "constraints": constraints},
        "latency": {"device": "cuda" if profile.device.startswith("cuda") else "cpu"},
        "search": {"sampler": sampler, "n_trials": profile.max_trials(),
                   "warm_start": warm or ["attention", "pls"],
                   "fidelity": {"mode": "multi", "rerank": profile.rerank,
                                "rerank_factor": profile.rerank_factor,
                                "screen": profile.screen}},
        "fine_tune": {"trial_steps": profile.trial_steps, "batch_size": profile.batch_size,
                      "trial_eval_images": profile.trial_eval_images,
                      "baseline_epochs": profile.baseline_epochs},
        "seed": seed})


@dataclass
class Setup:
    """The trained baseline and everything a job computes once from it."""

    profile: Profile
    model: nn.Module
    splits: DataSplits
    baseline: dict[str, Any]
    scores: dict[str, ImportanceScores]
    groups: list
    blocks: list
    cache: Path
    key: str  # the baseline's: what trained it

    def round_to(self) -> int:
        return make_spec(self.profile, TARGETS[0][1], "tpe", None, 0).channel_multiple(
            self.profile.device.split(":")[0])


def load_splits(profile: Profile) -> DataSplits:
    """Fashion-MNIST: val and calibration carved from the 60k training images, the
    official 10k test split whole; the training split cut to ``train_images``."""
    splits = load_dataset("fashion_mnist", profile.image_size, DATA_ROOT, seed=0)
    return splits.limit("train", profile.train_images).to_device(profile.device)


def prepare(profile: Profile, cache: Path, log: Callable[[str], None],
            baseline_seed: int = 0) -> Setup:
    """The baseline trained with ``baseline_seed`` (once, cached under ``cache``; the
    weights committed under ``BASELINES`` when they are there), its metrics, test accuracy
    and importance scores (cached too, measured on this host), as ``workers/prepare.py``
    makes them. The data splits do not depend on the seed."""
    cache.mkdir(parents=True, exist_ok=True)
    splits = load_splits(profile)
    spec = make_spec(profile, TARGETS[0][1], "tpe", None, 0)
    key = (f"{profile.arch}-{profile.image_size}px-{profile.train_images or 'all'}-"
           f"{profile.baseline_epochs}ep-b{profile.batch_size}"
           + (f"-seed{baseline_seed}" if baseline_seed else ""))
    committed = BASELINES / f"baseline-{key}.safetensors"
    weights = committed if committed.exists() else cache / f"baseline-{key}.safetensors"
    metrics = cache / f"baseline-{key}-{profile.device}-val{profile.trial_eval_images}.json"
    model = build_model(profile.arch, num_classes=splits.num_classes)
    if weights.exists():
        load_weights(model, weights)
        model.to(profile.device).eval()
    else:
        log(f"training the baseline: {profile.arch}, {len(splits.train)} images "  # type: ignore[arg-type]
            f"{profile.image_size}x{profile.image_size}, {profile.baseline_epochs} epochs, "
            f"seed {baseline_seed}")
        settings = {**spec.fine_tune.training_settings(),
                    "learning_rate": max(spec.fine_tune.learning_rate, 0.05)}
        config = TrainConfig(epochs=profile.baseline_epochs, seed=baseline_seed,
                             device=profile.device,
                             **settings)
        model = train_baseline(profile.arch, {}, splits, config, eval_split=None,
                               callback=lambda epoch, m: log(
                                   f"baseline epoch {epoch}: loss {m['train_loss']:.3f}"))
        save_weights(model, weights)
    if metrics.exists():  # every process of a run (and a rerun) shares one measurement
        baseline = json.loads(metrics.read_text())
    else:
        baseline = {**measure_baseline(model, splits, spec, device=profile.device),
                    "test_accuracy": evaluate(model, splits, "test", profile.device)}
        metrics.write_text(json.dumps(baseline, indent=1))
    example = splits.example_input().to(profile.device)
    round_to = spec.channel_multiple(profile.device.split(":")[0])
    groups = prunable_groups(model, example, round_to=round_to,
                             min_keep_ratio=spec.search.min_keep_ratio)
    blocks = removable_blocks(model, example)
    identity = dataset_identity("fashion_mnist", profile.image_size, 0,
                                root=f"{DATA_ROOT}|{profile.train_images}")
    scores = {method: cached_score(ScoreCache(cache / "scores"), model, splits, method,
                                   identity, groups, blocks)
              for method in ("attention", "pls")}
    return Setup(profile, model, splits, baseline, scores, groups, blocks, cache, key)


class StepMeter:
    """Optimiser steps of every ``fine_tune`` that ``search.objective`` runs (trials and
    re-ranks), read off each run's per-epoch callback, so a run stopped by the pruner
    counts what it took."""

    def __init__(self) -> None:
        self.steps = 0
        self._original = objective_module.fine_tune

    def __enter__(self) -> StepMeter:
        objective_module.fine_tune = self._counted  # type: ignore[assignment]
        return self

    def __exit__(self, *_: object) -> None:
        objective_module.fine_tune = self._original  # type: ignore[assignment]

    def _counted(self, *args: Any, **kwargs: Any) -> dict[str, list[float]]:
        inner = kwargs.pop("callback", None)
        taken = [0]

        def callback(epoch: int, metrics: dict[str, float]) -> None:
            taken[0] = int(metrics["step"])
            if inner is not None:
                inner(epoch, metrics)

        try:
            return self._original(*args, callback=callback, **kwargs)
        finally:
            self.steps += taken[0]


def final_tune(setup: Setup, model: nn.Module, steps: int, seed: int) -> float:
    """The final fine-tune (exactly ``steps`` steps, distilled from the unpruned network,
    as ``workers/finalize.py`` with ``fine_tune.distill``); test accuracy."""
    spec = make_spec(setup.profile, TARGETS[0][1], "tpe", None, seed)
    history = fine_tune(model, setup.splits, 0, teacher=setup.model, eval_split=None,
                        seed=seed, device=setup.profile.device, steps=steps,
                        **spec.fine_tune.training_settings())
    assert int(history["step"][-1]) == steps, history["step"]
    return evaluate(model, setup.splits, "test", setup.profile.device)


def _trial_log(trial: optuna.trial.FrozenTrial, baseline: dict[str, Any]) -> dict[str, Any]:
    record = TrialRecord.from_trial(trial)
    plan = record.plan or {}
    return {"number": trial.number, "state": trial.state.name,
            "label": trial.user_attrs.get(WARM_START_ATTR, ""), "fidelity": record.fidelity,
            "rerank_of": record.rerank_of, "feasible": record.feasible,
            "probe": record.accuracy_probe, "pruned": record.accuracy_pruned,
            "accuracy": record.accuracy, "seeds": record.accuracy_seeds,
            "flops": (record.flops or 0.0) / baseline["flops"],
            "latency": (record.latency_ms or 0.0) / baseline["latency_ms"],
            "projected": record.projected, "drop_blocks": plan.get("drop_blocks", []),
            "keep": plan.get("keep", {})}


def _warm_start(setup: Setup, spec: JobSpec, space: SearchSpace, warm: list[str], row: str,
                target: int) -> tuple[list[tuple[str, PrunePlan]], LatencyCache]:
    """The warm-start plans ``workers/prepare.py`` enqueues, and the latencies seeding sized
    them with, cached beside the baseline. Under counted limits they do not depend on the
    seed: made once per row and target, the seeds after the first reuse them. Under a
    latency limit seeding sizes plans by timing them, and one noisy timing can change a
    plan's depth (cpu-56 at 50% latency: the first ``probe`` plan dropped 15 blocks for (a)
    and 14 for (a-attn), and every seed of each finalised it), so each seed seeds anew, as
    each job would, and the spread over the seeds holds the seeding's."""
    profile = setup.profile
    timed = any(name in MEASURED_LIMITS for name in TARGETS[target][1])
    path = setup.cache / (f"seeds-{setup.key}-{row.split(')')[0][1:]}-{target}"
                          + (f"-seed{spec.seed}" if timed else "") + ".json")
    measured = LatencyCache()
    if path.exists():
        stored = json.loads(path.read_text())
        for fingerprint, latency in stored["latencies"].items():
            measured.put(fingerprint, latency)
        return [(label, PrunePlan.from_dict(plan)) for label, plan in stored["plans"]], measured
    example = setup.splits.example_input().to(profile.device)
    plans = seed_plans(setup.model, example, setup.groups,
                       [b for b in setup.blocks if b.name in space.blocks],
                       {method: setup.scores[method] for method in warm},
                       target_ratio(spec.objective.constraints, setup.baseline, spec.latency),
                       round_to=space.plan_round_to(),
                       allow_block_removal=spec.search.allow_block_removal,
                       probe=PlanProbe(setup.model, example, setup.splits), measured=measured)
    latencies = {f: measured.get(f).as_record() for f in measured}  # type: ignore[union-attr]
    path.with_suffix(".tmp").write_text(json.dumps(
        {"plans": [[label, plan.to_dict()] for label, plan in plans], "latencies": latencies}))
    path.with_suffix(".tmp").replace(path)
    return plans, measured


def run_search(setup: Setup, row: str, target: int, seed: int, folder: Path,
               log: Callable[[str], None]) -> dict[str, Any]:
    """One search row, one target, one seed, run as a job runs it (module docstring)."""
    started = time.perf_counter()
    profile = setup.profile
    sampler, warm = SEARCHES[row]
    spec = make_spec(profile, TARGETS[target][1], sampler, warm, seed)
    device = profile.device
    space = SearchSpace.from_spec(setup.groups, setup.blocks, spec.search,
                                  round_to=setup.round_to())
    context = SearchContext(spec=spec, model=setup.model, splits=setup.splits, space=space,
                            baseline=dict(setup.baseline), device=device)
    storage = open_storage(f"sqlite:///{folder / 'optuna.db'}")
    study = open_study(storage, f"{row}-{target}-{seed}-{time.time_ns()}", spec)
    if warm:
        enqueue_plans(study, space, *_warm_start(setup, spec, space, warm, row, target))
    trial_budget = profile.search_steps - profile.rerank_steps(spec)
    curve: list[tuple[int, float | None]] = []  # (steps so far, best short-fidelity val)
    objective = Objective(context)
    scratch = tempfile.TemporaryDirectory(dir=folder)
    timer = FinalTimer(spec, setup.model, setup.splits.input_shape, device,
                       float(setup.baseline["latency_ms"]), Path(scratch.name))
    weights = RerankWeights(Path(scratch.name) / "rerank")
    with StepMeter() as meter:

        def after_trial(study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
            accuracies = [t.values[0] for t in deliverable_trials(study)]
            curve.append((meter.steps, max(accuracies) if accuracies else None))

        run_trials(study, objective, spec, on_trial=after_trial,
                   should_stop=lambda: meter.steps + profile.trial_steps > trial_budget)
        trial_steps = meter.steps
        # FINALIZING starts with it (workers/reranking.py)
        reranked = rerank(study, objective, timer,
                          weights if profile.continue_rerank else None)
        rerank_steps = meter.steps - trial_steps
    outcome: dict[str, Any] = {
        "row": row, "target": target, "seed": seed, "trial_steps": trial_steps,
        "rerank_steps": rerank_steps, "final_steps": 0, "curve": curve,
        "rerank_skipped": {str(number): missed for number, missed in reranked.skipped.items()},
        "trials": [_trial_log(t, setup.baseline) for t in study.get_trials(deepcopy=False)
                   if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]}
    result = search_result(study, spec, setup.baseline)
    if not result.feasible or result.best is None:
        log(f"{row} {TARGETS[target][0]} seed {seed}: {result.message}")
        scratch.cleanup()
        return {**outcome, "test": None, "message": result.message,
                "seconds": time.perf_counter() - started}
    best = result.best
    delivery = Delivery(spec, setup.baseline, [best, *(
        t for t in feasible_ranked(study) if t.number != best.number)], space=space)
    with scratch:
        while (trial := delivery.next_plan()) is not None:
            model, _, record = timer.plan(PrunePlan.from_dict(trial.plan),
                                          setup.splits.example_input().to(device),
                                          delivery.missed)
            if delivery.judge(trial, record, "architecture"):
                break
        else:
            log(f"{row} {TARGETS[target][0]} seed {seed}: {delivery.miss_message()}")
            return {**outcome, "test": None, "message": delivery.miss_message(),
                    "seconds": time.perf_counter() - started}
        continued = weights.restore(plan_key(trial.plan), model)  # as workers/finalize.py
    test = final_tune(setup, model, profile.final_steps, seed)
    return {**outcome, "final_steps": profile.final_steps, "test": test,
            "chosen": trial.number, "chosen_val": trial.record.accuracy,
            "chosen_from": trial.record.rerank_of, "continued_rerank": continued,
            "flops": record["flops"] / setup.baseline["flops"],
            "latency": record["latency_ms"] / setup.baseline["latency_ms"],
            "dropped": len(PrunePlan.from_dict(trial.plan).drop_blocks),
            "seconds": time.perf_counter() - started}
