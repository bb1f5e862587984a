"""A job as a plain script: what a worker does for it, with no service around it.

The same library calls as ``workers/`` (``models`` and ``search``: baseline,
its metrics, importance scores, warm-start plans, ``run_trials``, the final
distilled fine-tune, measurement, exports) in one process, with no job table,
API, events, leases or progress. ``bench/workers.py`` runs it to measure the
service's overhead.

    .venv/bin/python bench/_plain_job.py SPEC.json HOME OPTUNA_URL OUT.json
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

import optuna  # noqa: E402
import torch  # noqa: E402

from core.spec import JobSpec  # noqa: E402
from models.checkpoints import sha256_file  # noqa: E402
from models.datasets import load_dataset  # noqa: E402
from models.export import export_onnx, export_torchscript, save_pruned  # noqa: E402
from models.importance import (  # noqa: E402
    ScoreCache,
    cached_score,
    dataset_identity,
)
from models.measure import measure_model  # noqa: E402
from models.plan import PrunePlan, apply_plan, prunable_groups, removable_blocks  # noqa: E402
from models.train import TrainConfig, evaluate, fine_tune, train_baseline  # noqa: E402
from search.costs import LatencyCache  # noqa: E402
from search.objective import (  # noqa: E402
    Objective,
    SearchContext,
    channel_chooser,
    measure_baseline,
)
from search.result import search_result  # noqa: E402
from search.seeding import PlanProbe, seed_plans, target_ratio  # noqa: E402
from search.space import SearchSpace  # noqa: E402
from search.storage import open_storage  # noqa: E402
from search.study import enqueue_plans, open_study, run_trials  # noqa: E402

STUDY_NAME = "plain"


def plain_job(spec: JobSpec, home: Path, optuna_url: str) -> dict[str, float]:
    """Run the whole job on one torch thread, timing its phases.

    Args:
        spec: the job.
        home: a fresh folder (score cache, exported files).
        optuna_url: an empty Optuna database; the study is called ``plain``.

    Returns:
        seconds spent preparing, searching and finalising, and in total.
    """
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started, cpu_started = time.perf_counter(), time.process_time()
    tuning = spec.fine_tune
    splits = load_dataset(spec.dataset.name, spec.image_size(), seed=spec.seed)
    config = TrainConfig(epochs=tuning.baseline_epochs,
                         learning_rate=max(tuning.learning_rate, 0.05),
                         batch_size=tuning.batch_size, label_smoothing=tuning.label_smoothing,
                         seed=spec.seed, device="cpu")
    model = train_baseline(spec.model.arch, {**spec.model.arguments}, splits, config)
    baseline = measure_baseline(model, splits, spec, device="cpu")
    example = splits.example_input()
    round_to = spec.channel_multiple("cpu")
    groups = prunable_groups(model, example, round_to=round_to,
                             min_keep_ratio=spec.search.min_keep_ratio)
    blocks = removable_blocks(model, example)
    identity = dataset_identity(spec.dataset.name, spec.image_size(), spec.seed)
    scores = {method: cached_score(ScoreCache(home / "scores"), model, splits, method, identity,
                                   groups, blocks) for method in spec.search.warm_start}
    space = SearchSpace.from_spec(groups, blocks, spec.search, round_to=round_to)
    measured = LatencyCache()
    plans = seed_plans(model, example, groups, [b for b in blocks if b.name in space.blocks],
                       scores, target_ratio(spec.objective.constraints, baseline, spec.latency),
                       round_to=space.plan_round_to(),
                       allow_block_removal=spec.search.allow_block_removal,
                       probe=PlanProbe(model, example, splits), measured=measured)
    storage = open_storage(optuna_url)
    study = open_study(storage, STUDY_NAME, spec)
    enqueue_plans(study, space, plans, measured)
    prepared = time.perf_counter()

    factory = channel_chooser(spec.search.channel_importance, lambda method: scores.get(
        method) or cached_score(ScoreCache(home / "scores"), model, splits, method, identity,
                                groups, blocks))
    context = SearchContext(spec=spec, model=model, splits=splits, space=space, baseline=baseline,
                            device="cpu", importance_factory=factory)
    run_trials(study, Objective(context), spec)
    searched = time.perf_counter()

    best = search_result(study, spec).best
    assert best is not None, "no feasible plan; loosen the benchmark's constraint"
    plan = PrunePlan.from_dict(best.plan)
    pruned = copy.deepcopy(model)
    apply_plan(pruned, plan, example, importance=factory(pruned) if factory else None)
    fine_tune(pruned, splits, tuning.final_epochs, teacher=model if tuning.distill else None,
              learning_rate=tuning.learning_rate, batch_size=tuning.batch_size,
              label_smoothing=tuning.label_smoothing, seed=spec.seed, device="cpu")
    metrics = {**measure_model(pruned, splits.input_shape, device="cpu",
                         batch_size=spec.latency.batch_size, warmup=spec.latency.warmup,
                         runs=spec.latency.runs).to_dict(),
               "accuracy": evaluate(pruned, splits, split="val"),
               "test_accuracy": evaluate(pruned, splits, split="test"),
               "baseline_test_accuracy": evaluate(model, splits, split="test")}
    pruned = pruned.to("cpu").eval()
    paths = [home / "pruned.safetensors", home / "pruned.onnx", home / "pruned.torchscript.pt"]
    save_pruned(pruned, paths[0], arch=spec.model.arch,
                arch_arguments={"num_classes": spec.num_classes(), **spec.model.arguments},
                plan=plan, input_shape=splits.input_shape, metrics=metrics)
    export_onnx(pruned, paths[1], splits.input_shape)
    export_torchscript(pruned, paths[2], splits.input_shape)
    for path in paths:
        sha256_file(path)
    finished = time.perf_counter()
    storage.engine.dispose()
    return {"queued": 0.0, "prepare": prepared - started, "search": searched - prepared,
            "finalize": finished - searched, "total": finished - started,
            "cpu": time.process_time() - cpu_started, "api_cpu": 0.0}


if __name__ == "__main__":
    spec_path, home, optuna_url, out = sys.argv[1:5]
    job_spec = JobSpec.model_validate_json(Path(spec_path).read_text())
    Path(out).write_text(json.dumps(plain_job(job_spec, Path(home), optuna_url)))
