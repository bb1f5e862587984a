"""FINALIZING: the best plan, pruned for real, fine-tuned longer, measured, exported.

Exactly one worker gets here (a guarded transition). The long fine-tune
distils from the unpruned network when the spec says so. The checkpoint and
its ONNX, torch.export (.pt2) and TorchScript exports, each with the preprocessing
an input needs, are written under temporary names and
renamed, then recorded with their sha256 in the transaction that makes the job
succeed.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from models.checkpoints import sha256_file
from models.export import export_onnx, export_program, export_torchscript, save_pruned
from models.measure import compare_latency, measure_model
from models.plan import PrunePlan, apply_plan
from models.train import evaluate, fine_tune
from search.result import search_result
from search.storage import open_storage
from search.study import open_study, study_name_for
from service.jobs import ArtifactFile, fail_job, succeed_job, update_progress
from workers.context import search_context
from workers.files import CHECKPOINT_FILES
from workers.runtime import JobRun, WorkerRuntime

NO_FEASIBLE_PLAN = "no_feasible_plan"


def finalize(runtime: WorkerRuntime, run: JobRun) -> None:
    """Take a ``finalizing`` job to ``succeeded`` (or ``failed`` when nothing fits)."""
    spec, job = run.spec, run.job
    study = open_study(open_storage(runtime.settings.optuna_url), study_name_for(job.id), spec)
    result = search_result(study, spec)
    if not result.feasible or result.best is None:
        fail_job(runtime.engine, job.id, NO_FEASIBLE_PLAN,
                 result.message + "; loosen the constraints or allow more trials",
                 worker_id=runtime.worker_id)
        return
    runtime.event(run, "result", result.message, {"trial": result.best.number})
    context = search_context(runtime, run)
    device = runtime.device.name
    plan = PrunePlan.from_dict(result.best.plan)
    model = copy.deepcopy(context.model)
    importance = context.importance_factory(model) if context.importance_factory else None
    apply_plan(model, plan, context.example_input().to(device), importance=importance)
    epochs = spec.fine_tune.final_epochs
    runtime.phase(run, f"fine-tuning the best plan (trial {result.best.number}) for {epochs} "
                       f"epochs{' with distillation' if spec.fine_tune.distill else ''}")

    def report(epoch: int, metrics: dict[str, float]) -> None:
        runtime.event(run, "final", f"final fine-tune epoch {epoch}/{epochs}: val accuracy "
                      f"{metrics.get('val_accuracy', 0.0):.3f}", metrics)

    fine_tune(model, context.splits, epochs,
              teacher=context.model if spec.fine_tune.distill else None, callback=report,
              cancel_event=run.cancel, seed=spec.seed, device=device,
              **spec.fine_tune.training_settings())
    runtime.phase(run, f"measuring the pruned model on {runtime.device.description}")
    metrics = _final_metrics(runtime, run, context, model)
    runtime.phase(run, "exporting safetensors, ONNX, torch.export and TorchScript")
    preprocessing = (context.splits.preprocessing.to_metadata()
                     if context.splits.preprocessing is not None else None)
    _export(runtime, run, model, plan, context.splits.input_shape, metrics, preprocessing)
    best = {**metrics, "trial": result.best.number, "plan": plan.to_dict()}
    update_progress(runtime.engine, job.id, {**(_progress(runtime, run)), "finalized": True}, best)
    succeed_job(runtime.engine, job.id, worker_id=runtime.worker_id, best=best,
                artifacts=[_artifact(run, kind) for kind in CHECKPOINT_FILES])


def _artifact(run: JobRun, kind: str) -> ArtifactFile:
    path = run.files.checkpoint(kind)
    return ArtifactFile(kind=kind, path=str(path), size=os.path.getsize(path),
                        sha256=sha256_file(path))


def _progress(runtime: WorkerRuntime, run: JobRun) -> dict[str, Any]:
    from service.jobs import get_job

    return dict(get_job(runtime.engine, run.job.id).progress or {})


def _final_metrics(runtime: WorkerRuntime, run: JobRun, context: Any, model: Any) -> dict:
    spec, device = run.spec, runtime.device.name
    # Latency is timed once, side by side with the unpruned network (passes alternate):
    # the baseline's own latency was timed while preparing, under whatever load was then.
    # measure_model() contributes everything else, so it times a single pass.
    cost = measure_model(model, context.splits.input_shape, device=device,
                   batch_size=spec.latency.batch_size, warmup=0, runs=1).to_dict()
    reference, timed = compare_latency(context.model, model, context.splits.input_shape, device,
                                       batch_size=spec.latency.batch_size,
                                       warmup=spec.latency.warmup, runs=spec.latency.runs)
    cost.update(latency_ms=timed.median_ms, latency_p90_ms=timed.p90_ms)
    baseline = context.baseline
    return {
        **cost, "flops": cost["macs"],
        "accuracy": evaluate(model, context.splits, split="val", device=device),
        "test_accuracy": evaluate(model, context.splits, split="test", device=device),
        "baseline_test_accuracy": evaluate(context.model, context.splits, split="test",
                                           device=device),
        "latency_ratio": timed.median_ms / reference.median_ms,
        "flops_ratio": cost["macs"] / baseline["flops"],
        "params_ratio": cost["params"] / baseline["params"],
        "memory_ratio": cost["memory_mb"] / baseline["memory_mb"],
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
    export_onnx(model, files.checkpoint("onnx"), input_shape, preprocessing=preprocessing)
    export_program(model, files.checkpoint("pt2"), input_shape, preprocessing=preprocessing)
    export_torchscript(model, files.checkpoint("torchscript"), input_shape,
                       preprocessing=preprocessing)
