"""The unpruned network a job starts from: uploaded weights, or a trained baseline."""

from __future__ import annotations

from torch import nn

from core.errors import CheckpointError
from core.spec import JobSpec
from models import build_model
from models.checkpoints import load_weights, save_weights
from models.datasets import DataSplits
from models.train import TrainConfig, train_baseline
from service.jobs import upload_path
from workers.runtime import JobRun, WorkerRuntime


def build_unpruned(spec: JobSpec, num_classes: int) -> nn.Module:
    return build_model(spec.model.arch, num_classes=num_classes, **spec.model.arguments)


def baseline_model(runtime: WorkerRuntime, run: JobRun, splits: DataSplits) -> nn.Module:
    """Load the job's baseline, making it first when no earlier attempt did.

    The first worker writes ``baseline.safetensors``; every later phase and
    every worker that joins the search loads that file, so all trials prune
    the same network.
    """
    spec, files = run.spec, run.files
    model = build_unpruned(spec, spec.num_classes())
    if files.baseline.exists():
        return load_weights(model, files.baseline).to(runtime.device.name)
    if spec.model.weights:
        path = upload_path(runtime.engine, run.job.tenant_id, spec.model.weights)
        if path is None:
            raise CheckpointError(f"weights upload {spec.model.weights!r} no longer exists; "
                                  "upload the weights again and resubmit")
        runtime.phase(run, "loading uploaded weights")
        load_weights(model, path)
    else:
        epochs = spec.fine_tune.baseline_epochs
        phase = f"training a baseline for {epochs} epochs (no weights given)"
        runtime.phase(run, phase)
        report = runtime.epoch_reporter(run, phase, "baseline", "baseline", epochs)

        settings = {**spec.fine_tune.training_settings(),
                    "learning_rate": max(spec.fine_tune.learning_rate, 0.05)}
        config = TrainConfig(epochs=epochs, seed=spec.seed, device=runtime.device.name,
                             **settings)
        model = train_baseline(spec.model.arch, {**spec.model.arguments}, splits, config,
                               callback=report, cancel_event=run.cancel)
    save_weights(model, files.baseline)
    return model.to(runtime.device.name)
