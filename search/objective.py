"""The objective: one trial = plan -> cheap checks -> prune -> fine-tune -> record.

A sampled plan that breaks a limit on FLOPs, parameters or memory is first
scaled onto it (``search.projection``; the record keeps the proposal as
``sampled_plan`` and says ``projected``). Cheap checks come next: FLOPs, params,
memory and latency are measured on the pruned but not yet fine-tuned network,
and a plan that still breaks a hard limit is recorded as infeasible without
being fine-tuned.

Costs are measured as ``search.costs`` measures them: when latency counts (a
latency limit, or the weighted and pareto modes) or the spec names an exported
runtime (``latency.runtime``), a trial's network is timed side by side with the
unpruned one in that runtime, a plan that breaks only a latency limit is timed
once more, and a network the study already knows (an earlier trial, or seeding's
timing of a warm-start plan) reuses its latency. A plan an earlier trial measured
(sampled again, or two proposals projected onto one) takes that trial's record
(``duplicate_of``) and costs nothing: no pruning, timing or fine-tune again.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from core.spec import JobSpec
from core.trial import TrialRecord, is_feasible, plan_key
from models.datasets import DataSplits
from models.importance import ImportanceScores, ScoreImportance
from models.measure import measure_model
from models.plan import PrunePlan, apply_plan
from models.probe import recalibrated
from models.train import evaluate, fine_tune
from search.budget import claim_trial_slot
from search.constraints import active_limits, violations
from search.costs import Aim, CostModel, LatencyCache, LatencyTimer
from search.projection import PlanProjection
from search.space import SearchSpace

TrialCallback = Callable[[optuna.Trial, int, float], None]
#: Multi-fidelity: the step a trial reports its probe at; epoch ``e`` reports at ``1 + e``.
PROBE_STEP = 1


@dataclass
class SearchContext:
    """What every trial of one job needs, built once per worker process.

    Attributes:
        spec: the job spec.
        model: the trained, unpruned network (never modified; trials copy it).
        splits: the dataset splits.
        space: the search space (groups and blocks).
        baseline: the unpruned network's metrics: accuracy, latency_ms,
            memory_mb, flops, params (as measured by ``measure_baseline``).
        device: where trials fine-tune and measure.
        importance_factory: builds, for a copy of the model, the Torch-Pruning
            Importance that decides which channels a group loses (scores are
            looked up by module, so each copy needs its own); None = L1 magnitude.
        cancel_event: set by the worker when the job is cancelled; fine-tuning
            stops within one step.
        on_epoch: called after every fine-tune epoch (progress, cancellation).
        worker: recorded on every trial this process runs (user attribute ``worker``).
        latency_cache: latencies this process timed or found, by network fingerprint.
    """

    spec: JobSpec
    model: nn.Module
    splits: DataSplits
    space: SearchSpace
    baseline: dict[str, Any]
    device: str = "cpu"
    importance_factory: Callable[[nn.Module], Any] | None = None
    cancel_event: threading.Event | None = None
    on_epoch: TrialCallback | None = None
    worker: str = ""
    latency_cache: LatencyCache = field(default_factory=LatencyCache)

    def example_input(self) -> torch.Tensor:
        return self.splits.example_input()


def channel_chooser(method: str, load_scores: Callable[[str], ImportanceScores]
                    ) -> Callable[[nn.Module], Any] | None:
    """What ranks the channels of a group for ``apply_plan``: None (Torch-Pruning's L1
    magnitude) for ``magnitude``, else the named scorer's filter scores (each copy of
    the network needs its own ``ScoreImportance``: scores are looked up by module)."""
    if method == "magnitude":
        return None
    scores = load_scores(method)
    return lambda copy: ScoreImportance(copy, scores)


def measure_baseline(model: nn.Module, splits: DataSplits, spec: JobSpec,
                     device: str = "cpu") -> dict[str, Any]:
    """Accuracy and costs of the unpruned network, the reference for every ratio; its
    latency timed as trials time theirs (``latency``: runtime, threads, target)."""
    timing = spec.latency
    exported = timing.runtime != "torch" or timing.target is not None
    cost = measure_model(model, splits.input_shape, device=device,
                         batch_size=timing.batch_size, warmup=0 if exported else timing.warmup,
                         runs=1 if exported else timing.runs, threads=timing.threads).to_dict()
    if exported:
        cost.update(latency_timer(spec, model, splits.input_shape, device, None).time(model))
    cost["latency_runtime"] = timing.runtime
    # Scored on the validation images the trials are scored on (fine_tune.trial_eval_images).
    scored = splits.limit("val", spec.fine_tune.trial_eval_images)
    return {**cost, "flops": cost["macs"],
            "accuracy": evaluate(model, scored, split="val", device=device)}


def latency_timer(spec: JobSpec, model: nn.Module, input_shape: tuple[int, ...], device: str,
                  baseline_latency_ms: float | None) -> LatencyTimer:
    """How the job times networks: side by side with ``model`` (when its latency is
    known) in the spec's runtime, batch size, threads, passes and target."""
    timing = spec.latency
    return LatencyTimer(model, input_shape, device, baseline_latency_ms, timing.batch_size,
                        timing.warmup, timing.runs, timing.runtime, timing.threads,
                        timing.target)


def latency_counts(spec: JobSpec) -> bool:
    """Whether trials are compared by latency (a limit on it, or a mode that weighs it)."""
    objective = spec.objective
    return (objective.mode != "constrained" or objective.constraints.max_latency_ms is not None
            or objective.constraints.max_latency_ratio is not None)


def timed_in_runtime(spec: JobSpec) -> bool:
    """Whether every trial's network is timed side by side in the job's runtime: when
    latency counts, and always in an exported runtime or on an agent (a latency a user
    reads is never eager PyTorch's when the spec names another runtime)."""
    return (latency_counts(spec) or spec.latency.runtime != "torch"
            or spec.latency.target is not None)


def objective_values(spec: JobSpec, record: dict[str, Any], baseline: dict[str, Any]
                     ) -> float | list[float]:
    """A trial's objective value(s) from its record: accuracy (constrained), accuracy less
    the weighted cost ratios (weighted), or accuracy, latency (and memory) (pareto)."""
    # A plan that broke a limit was not evaluated: it ranks by its violations, not this 0.
    accuracy = record["accuracy"] if record.get("accuracy") is not None else 0.0
    mode = spec.objective.mode
    if mode == "constrained":
        return accuracy
    if mode == "weighted":
        weights = spec.objective.weights
        return (accuracy
                - weights.latency * record["latency_ms"] / baseline["latency_ms"]
                - weights.memory * record["memory_mb"] / baseline["memory_mb"])
    values = [accuracy, record["latency_ms"]]
    if spec.objective.pareto_memory:
        values.append(record["memory_mb"])
    return values


#: Fidelities whose measurements a trial of the same plan takes instead of measuring again
#: (a re-rank's ``long`` is a different measurement; ``probe``-screened trials were pruned).
REUSABLE_FIDELITIES = ("costs", "pruned", "short")


def measured_before(study: optuna.Study, plan: PrunePlan) -> FrozenTrial | None:
    """The first finished trial that measured ``plan`` (``REUSABLE_FIDELITIES``), if any."""
    wanted = plan_key(plan.to_dict())
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if (trial.user_attrs.get("fidelity") in REUSABLE_FIDELITIES
                and plan_key(trial.user_attrs.get("plan")) == wanted):
            return trial
    return None


class Objective:
    """The callable handed to ``study.optimize``; one instance per worker process."""

    def __init__(self, context: SearchContext) -> None:
        self.context = context
        self.limits = active_limits(context.spec.objective.constraints, context.baseline)
        timer = latency_timer(context.spec, context.model, context.splits.input_shape,
                              context.device, float(context.baseline["latency_ms"]))
        # Any plan that misses only latency limits is timed again, however far it misses.
        self.costs = CostModel(timer, Aim(tuple(self.limits)), context.latency_cache)
        # Trials fine-tune on the whole training split and are scored on at most
        # fine_tune.trial_eval_images validation images, the same ones every time.
        self.scored = context.splits.limit("val", context.spec.fine_tune.trial_eval_images)
        self.projection = PlanProjection(
            context.model, context.example_input(), self.limits, context.space,
            accuracy_only=context.spec.objective.mode == "constrained")

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        context, spec = self.context, self.context.spec
        claim_trial_slot(trial.study, trial, spec.search.n_trials)
        sampled = context.space.to_plan(*context.space.suggest(trial))
        plan = self.projection(sampled)
        earlier = measured_before(trial.study, plan)
        if earlier is not None:
            return self._reuse(trial, earlier, plan, sampled)
        model = copy.deepcopy(context.model)
        importance = context.importance_factory(model) if context.importance_factory else None
        apply_plan(model, plan, context.example_input(), importance=importance)
        TrialRecord(worker=context.worker).store(trial)
        record: dict[str, Any] = {
            "plan": plan.to_dict(), "projected": plan is not sampled,
            **({"sampled_plan": sampled.to_dict()} if plan is not sampled else {}),
            **self.costs.trial_costs(model, trial.study, side_by_side=timed_in_runtime(spec))}
        record["violations"] = violations(self.limits, record)
        record["fine_tune_seconds"] = 0.0
        # A plan that already breaks a counted limit is neither evaluated nor fine-tuned
        # (its accuracy stays None); the fine-tune's last evaluation is the accuracy.
        record["fidelity"] = "costs"
        constraints_stored = False
        if is_feasible(record["violations"]) or not self.limits:
            record["accuracy_pruned"] = evaluate(model, self.scored, split="val",
                                                 device=context.device)
            if self.multi_fidelity and spec.search.fidelity.screen == "probe":
                self._screen(trial, model, record)
            record["fidelity"] = "short" if self.fine_tunes else "pruned"
            # Stored before the fine-tune too, so a trial the pruner stops keeps it.
            TrialRecord.model_validate(record).store(trial)
            constraints_stored = True
            record["fine_tune_seconds"], tuned = self._fine_tune(trial, model, record)
            record["accuracy"] = record["accuracy_pruned"] if tuned is None else tuned
        # Limits become the trial's Optuna constraints (once, final), the rest user attributes.
        TrialRecord.model_validate({**record, "violations": None} if constraints_stored
                                   else record).store(trial)
        return objective_values(spec, record, context.baseline)

    def _reuse(self, trial: optuna.Trial, earlier: FrozenTrial, plan: PrunePlan,
               sampled: PrunePlan) -> float | list[float]:
        """The measurements of ``earlier``, which measured ``plan`` already: a sampler that
        proposes a plan again (or two proposals projected onto one) costs no fine-tune."""
        source = TrialRecord.from_trial(earlier)
        record: dict[str, Any] = {
            **source.model_dump(exclude={"feasible", "worker", "sampled_plan", "projected",
                                         "fine_tune_seconds", "duplicate_of"}),
            "duplicate_of": earlier.number, "fine_tune_seconds": 0.0,
            "worker": self.context.worker, "projected": plan is not sampled,
            **({"sampled_plan": sampled.to_dict()} if plan is not sampled else {})}
        TrialRecord.model_validate(record).store(trial)
        return objective_values(self.context.spec, record, self.context.baseline)

    @property
    def multi_fidelity(self) -> bool:
        return self.context.spec.search.fidelity.mode == "multi"

    @property
    def fine_tunes(self) -> bool:
        budget = self.context.spec.fine_tune.trial_budget()
        return bool(budget["epochs"] or budget.get("steps"))

    def _score(self, record: dict[str, Any], accuracy: float) -> float:
        """What a single-objective trial reports for an intermediate accuracy: its value,
        had it ended there (in weighted mode, with its cost penalties)."""
        value = objective_values(self.context.spec, {**record, "accuracy": accuracy},
                        self.context.baseline)
        assert isinstance(value, float)
        return value

    def _screen(self, trial: optuna.Trial, model: nn.Module, record: dict[str, Any]) -> None:
        """The adaptive-BatchNorm probe (``search.fidelity`` multi): its accuracy is the
        trial's report at ``PROBE_STEP``, and the pruner (successive halving) decides
        whether the plan earns its fine-tune.

        Raises:
            optuna.TrialPruned: it does not; the record is stored with fidelity ``probe``.
        """
        context = self.context
        probed = recalibrated(model, context.splits)
        record["accuracy_probe"] = evaluate(probed, self.scored, split="val",
                                            device=context.device)
        trial.report(self._score(record, record["accuracy_probe"]), PROBE_STEP)
        if trial.should_prune():
            TrialRecord.model_validate({**record, "fidelity": "probe"}).store(trial)
            raise optuna.TrialPruned(f"screened out by the probe at "
                                     f"{record['accuracy_probe']:.3f}")

    def _fine_tune(self, trial: optuna.Trial, model: nn.Module, record: dict[str, Any]
                   ) -> tuple[float, float | None]:
        """Seconds spent and the last epoch's validation accuracy (None: no fine-tune).

        Single-objective trials report each epoch's score, at step ``epoch`` (with
        multi-fidelity at ``PROBE_STEP + epoch``, and the pruner is not asked after the
        last epoch: the trial's work is done by then)."""
        context, spec = self.context, self.context.spec
        # {"epochs": n}, or {"epochs": 0, "steps": n} with fine_tune.trial_steps
        budget: dict[str, Any] = spec.fine_tune.trial_budget()
        epochs = budget.pop("epochs")
        if epochs == 0 and not budget.get("steps"):
            return 0.0, None
        single_objective = spec.objective.mode != "pareto"
        offset = PROBE_STEP if self.multi_fidelity else 0

        def after_epoch(epoch: int, metrics: dict[str, float]) -> None:
            accuracy = metrics.get("val_accuracy", 0.0)
            if context.on_epoch is not None:
                context.on_epoch(trial, epoch, accuracy)
            if single_objective:
                trial.report(self._score(record, accuracy) if offset else accuracy,
                             offset + epoch)
                if (not offset or epoch < epochs) and trial.should_prune():
                    raise optuna.TrialPruned(f"stopped after epoch {epoch} at {accuracy:.3f}")

        started = time.perf_counter()
        history = fine_tune(model, self.scored, epochs, callback=after_epoch,
                            seed=spec.seed + trial.number, device=context.device,
                            cancel_event=context.cancel_event, **budget,
                            **spec.fine_tune.training_settings())
        return time.perf_counter() - started, history["val_accuracy"][-1]

    def fine_tuned(self, plan: PrunePlan, scale: float, seed: int) -> tuple[float, nn.Module]:
        """``plan``'s network fine-tuned for ``scale`` times the trial fine-tune with
        ``seed`` (a re-rank, ``search.rerank``), and its validation accuracy."""
        context, spec = self.context, self.context.spec
        model = copy.deepcopy(context.model)
        importance = context.importance_factory(model) if context.importance_factory else None
        apply_plan(model, plan, context.example_input(), importance=importance)
        budget: dict[str, Any] = {key: math.ceil(value * scale) if value else value
                                  for key, value in spec.fine_tune.trial_budget().items()}
        history = fine_tune(model, self.scored, budget.pop("epochs"), seed=seed,
                            device=context.device, cancel_event=context.cancel_event,
                            **budget, **spec.fine_tune.training_settings())
        return float(history["val_accuracy"][-1]), model
