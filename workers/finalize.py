"""FINALIZING: the best plan, pruned for real, fine-tuned longer, measured, exported.

Exactly one worker gets here (a guarded transition). The delivered model meets
its limits (``search.delivery``): the best plan's network is re-timed side by
side with the unpruned one, in the job's runtime, until the ratio is stable
(``search.final_timing``); when it misses a limit, the next feasible plans are
tried (a bounded number), then, when only latency was missed and by little, the
closest plan narrowed onto the limit; when none meets them the job fails saying
by how much, against which limit.
The long fine-tune distils from the unpruned network when the spec says so
(``fine_tune.distill``), unless the plan already beat it after its trial's fine-tune,
on the validation images both were scored on (``_teacher``; ``best.distilled`` says
which), and goes on from the weights the re-rank trained for the plan when this worker re-ranked
it (``search.rerank_weights``; ``best.continued_rerank`` says which). The
ONNX file is exported first and timed as the user will run it; the checkpoint
and its torch.export (.pt2) and TorchScript exports follow, each with the
preprocessing an input needs, written under temporary names and renamed, then
recorded with their sha256 in the transaction that makes the job succeed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from core.trial import plan_key
from models.checkpoints import sha256_file
from models.export import export_onnx, export_program, export_torchscript, save_pruned
from models.plan import PrunePlan
from models.train import evaluate, fine_tune
from search.delivery import Delivery, feasible_ranked
from search.final_timing import FinalTimer
from search.objective import SearchContext
from search.rerank_weights import RerankWeights
from search.result import FinishedTrial, search_result
from search.study import open_study, study_name_for
from service.jobs import ArtifactFile, JobStatus, fail_job, get_job, succeed_job, transition
from workers.context import search_context
from workers.files import CHECKPOINT_FILES
from workers.reranking import rerank_best
from workers.runtime import JobRun, WorkerRuntime

NO_FEASIBLE_PLAN = "no_feasible_plan"
#: Error code of a job whose delivered model missed a limit in the final timing.
LIMIT_MISSED = "limit_missed"


def finalize(runtime: WorkerRuntime, run: JobRun) -> None:
    """Take a ``finalizing`` job to ``succeeded``, or to ``failed`` when no plan fits or
    when no plan tried meets its limits in the final timing (``search.delivery``)."""
    spec, job = run.spec, run.job
    study = open_study(runtime.study_storage(), study_name_for(job.id), spec)
    with tempfile.TemporaryDirectory(prefix="topiary-final-") as scratch:
        # One timer for the re-rank and delivery: an architecture timed twice is judged on
        # every round of both (search.final_timing).
        context, timer = None, None
        weights = RerankWeights(Path(scratch) / "rerank")
        if spec.search.fidelity.mode == "multi":  # the best plans re-ranked first
            context = search_context(runtime, run)
            timer = _final_timer(runtime, context, Path(scratch))
            rerank_best(runtime, run, study, context, timer, weights)
        # The baseline's metrics: what the ratios of a pareto job's pick.limit are of.
        result = search_result(study, spec, get_job(runtime.engine, job.id).baseline)
        if not result.feasible or result.best is None:
            fail_job(runtime.engine, job.id, NO_FEASIBLE_PLAN,
                     result.message + "; loosen the constraints or allow more trials",
                     worker_id=runtime.worker_id)
            return
        runtime.event(run, "result", result.message, {"trial": result.best.number})
        context = context or search_context(runtime, run)
        timer = timer or _final_timer(runtime, context, Path(scratch))
        best = result.best
        delivery = Delivery(spec, context.baseline, [best, *(
            trial for trial in feasible_ranked(study) if trial.number != best.number)],
            space=context.space)
        while (trial := delivery.next_plan()) is not None:
            if _deliver(runtime, run, context, delivery, timer, weights, trial):
                return
    _fail_with_miss(runtime, run, delivery)


def _final_timer(runtime: WorkerRuntime, context: SearchContext, scratch: Path) -> FinalTimer:
    return FinalTimer(context.spec, context.model, context.splits.input_shape,
                      runtime.device.name, float(context.baseline["latency_ms"]), scratch)


def _deliver(runtime: WorkerRuntime, run: JobRun, context: Any, delivery: Delivery,
             timer: FinalTimer, weights: RerankWeights, trial: FinishedTrial) -> bool:
    """Time the trial's plan, fine-tune it (from its re-rank's weights when ``weights``
    has them), export it and time the file; succeed the job when both timings meet the
    limits (True), else log the miss (False)."""
    spec, device = run.spec, runtime.device.name
    plan = PrunePlan.from_dict(trial.plan)
    where = f"in {spec.latency.runtime} on {runtime.device.description}"
    which = f"{'the narrowed plan' if delivery.is_narrowed(trial) else 'the plan'} of trial " \
            f"{trial.number}"
    runtime.phase(run, f"timing {which} {where}")
    model, costs, record = timer.plan(plan, context.example_input().to(device), delivery.missed,
                                      importance_factory=context.importance_factory)
    if not delivery.judge(trial, record, "architecture"):
        _report_miss(runtime, run, delivery, "its network")
        return False
    epochs = spec.fine_tune.final_epochs
    continued = weights.restore(plan_key(trial.plan), model)
    teacher = _teacher(runtime, run, context, trial)
    phase = (f"fine-tuning {which} for {epochs} "
             f"epochs{' with distillation' if teacher is not None else ''}"
             f"{', going on from its re-rank' if continued else ''}")
    runtime.phase(run, phase)
    fine_tune(model, context.splits, epochs, teacher=teacher,
              callback=runtime.epoch_reporter(run, phase, "final", "final fine-tune", epochs),
              cancel_event=run.cancel, seed=spec.seed, device=device,
              **spec.fine_tune.training_settings())
    preprocessing = context.splits.export_metadata()
    export_onnx(model, run.files.checkpoint("onnx"), context.splits.input_shape,
                preprocessing=preprocessing)
    runtime.phase(run, f"timing the delivered model {where}")
    record = {**costs, **timer.delivered(
        model, run.files.checkpoint("onnx"),
        lambda latency: bool(delivery.missed({**costs, **latency})), plan.fingerprint())}
    if not delivery.judge(trial, record, "artifact"):
        _report_miss(runtime, run, delivery, "the delivered model")
        return False
    metrics = _final_metrics(runtime, context, model, record)
    metrics["limits"] = delivery.standings(metrics)
    metrics["plans_tried"] = delivery.tried()
    metrics["narrowed"] = delivery.is_narrowed(trial)
    metrics["continued_rerank"] = continued
    metrics["distilled"] = teacher is not None
    runtime.phase(run, "exporting safetensors, torch.export and TorchScript")
    _export(runtime, run, model, plan, context.splits.input_shape, metrics, preprocessing)
    best = {**metrics, "trial": trial.number, "plan": plan.to_dict()}
    succeed_job(runtime.engine, run.job.id, worker_id=runtime.worker_id, best=best,
                progress={**_progress(runtime, run), "finalized": True},
                artifacts=[_artifact(run, kind) for kind in CHECKPOINT_FILES])
    return True


def _teacher(runtime: WorkerRuntime, run: JobRun, context: SearchContext,
             trial: FinishedTrial) -> Any:
    """The network the final fine-tune distils from: the unpruned one, or None when
    ``fine_tune.distill`` is off or the plan already beat it on the validation images
    both were scored on (a baseline trained too briefly, say): its soft targets would
    pull the plan down to it, so the plan learns from the labels alone."""
    if not run.spec.fine_tune.distill:
        return None
    teacher_accuracy, plan_accuracy = context.baseline.get("accuracy"), trial.record.accuracy
    if teacher_accuracy is not None and plan_accuracy is not None \
            and plan_accuracy > teacher_accuracy:
        runtime.event(run, "info", (
            f"not distilling from the unpruned network: the plan of trial {trial.number} "
            f"scored {plan_accuracy:.1%} after its trial fine-tune, above the unpruned "
            f"network's {teacher_accuracy:.1%} on the same validation images; the final "
            "fine-tune learns from the labels alone (is the uploaded or baseline network "
            "fully trained?)"), {"trial": trial.number, "distilled": False})
        return None
    return context.model


def _report_miss(runtime: WorkerRuntime, run: JobRun, delivery: Delivery, what: str) -> None:
    attempt = delivery.attempts[-1]
    missed = "; ".join(
        f"{standing['name']} {standing['limit']:g}: {standing['delivered']:.4g}, "
        f"{standing['missed_by']:.1%} over" for standing in delivery.standings(attempt.record)
        if standing["met"] is False)
    following = delivery.next_plan()
    if following is None:
        then = "no other plan left to try"
    elif delivery.is_narrowed(following):
        then = (f"narrowing the plan of trial {following.number} onto the limit (timing "
                "noise around a limit the search aimed at)")
    else:
        then = f"trying the plan of trial {following.number}"
    runtime.event(run, "final", f"re-timed side by side, {what} of trial "
                  f"{attempt.trial.number} misses {missed}; {then}",
                  {"trial": attempt.trial.number, "stage": attempt.stage,
                   "missed": attempt.missed, **{key: value for key, value in
                                                attempt.record.items()
                                                if key.startswith("latency_")}})


def _fail_with_miss(runtime: WorkerRuntime, run: JobRun, delivery: Delivery) -> None:
    """End the job stating by how much the closest plan missed which limit."""
    closest = delivery.closest()
    best = None
    if closest is not None:
        record = {"accuracy": closest.trial.record.accuracy, **closest.record}
        best = {**record, "trial": closest.trial.number, "plan": closest.trial.plan,
                "limits": delivery.standings(record),
                "plans_tried": delivery.tried()}
    transition(runtime.engine, run.job.id, JobStatus.FAILED, worker_id=runtime.worker_id,
               error_code=LIMIT_MISSED, error_message=delivery.miss_message(), best=best)


def _artifact(run: JobRun, kind: str) -> ArtifactFile:
    path = run.files.checkpoint(kind)
    return ArtifactFile(kind=kind, path=str(path), size=os.path.getsize(path),
                        sha256=sha256_file(path))


def _progress(runtime: WorkerRuntime, run: JobRun) -> dict[str, Any]:
    return dict(get_job(runtime.engine, run.job.id).progress or {})


def _final_metrics(runtime: WorkerRuntime, context: Any, model: Any,
                   record: dict[str, Any]) -> dict[str, Any]:
    """Accuracies, costs and their ratios to the baseline; latency from the final timing."""
    device = runtime.device.name
    baseline = context.baseline
    return {
        **record,
        "accuracy": evaluate(model, context.splits, split="val", device=device),
        "test_accuracy": evaluate(model, context.splits, split="test", device=device),
        "baseline_test_accuracy": evaluate(context.model, context.splits, split="test",
                                           device=device),
        "flops_ratio": record["macs"] / baseline["flops"],
        "params_ratio": record["params"] / baseline["params"],
        "memory_ratio": record["memory_mb"] / baseline["memory_mb"],
        "device_description": runtime.device.description,
    }


def _export(runtime: WorkerRuntime, run: JobRun, model: Any, plan: PrunePlan,
            input_shape: tuple[int, ...], metrics: dict[str, Any],
            preprocessing: dict[str, Any] | None) -> None:
    spec, files = run.spec, run.files
    model = model.to("cpu").eval()
    arguments = {"num_classes": spec.num_classes(), **spec.model.arguments}
    save_pruned(model, files.checkpoint("safetensors"), arch=spec.model.arch,
                arch_arguments=arguments, plan=plan, input_shape=input_shape, metrics=metrics,
                preprocessing=preprocessing)
    export_program(model, files.checkpoint("pt2"), input_shape, preprocessing=preprocessing)
    export_torchscript(model, files.checkpoint("torchscript"), input_shape,
                       preprocessing=preprocessing)
