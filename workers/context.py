"""Rebuild, in any worker, what the trials of a searching job need."""

from __future__ import annotations

import json

from core.spec import JobSpec
from models.importance import ScoreCache, cached_score, dataset_identity
from models.plan import prunable_groups, removable_blocks
from search.objective import SearchContext, channel_chooser
from search.space import SearchSpace
from service.jobs import get_job
from workers.baseline import baseline_model
from workers.runtime import JobRun, WorkerRuntime


def scored_dataset(spec: JobSpec) -> str:
    """The dataset part of an importance-score cache key: name, size, seed, and what
    changes the images a scorer sees (the root and the preprocessing)."""
    preprocessing = json.dumps(spec.dataset.preprocessing.model_dump(mode="json"),
                               sort_keys=True)
    return dataset_identity(spec.dataset.name, spec.image_size(), spec.seed,
                            root=f"{spec.dataset.root or ''}|{preprocessing}")


def search_context(runtime: WorkerRuntime, run: JobRun) -> SearchContext:
    """The baseline from the job's file, the baseline metrics from the job row, and
    what chooses the channels each group loses: L1 magnitude (Torch-Pruning's
    default) or, with ``search.channel_importance`` naming a scorer, its scores
    (from the cache; computed here if the warm start did not use that scorer)."""
    spec = run.spec
    splits = runtime.load_data(spec)
    model = baseline_model(runtime, run, splits)
    example = splits.example_input().to(runtime.device.name)
    round_to = spec.channel_multiple(runtime.device.type)
    groups = prunable_groups(model, example, round_to=round_to,
                             min_keep_ratio=spec.search.min_keep_ratio)
    blocks = removable_blocks(model, example)
    factory = channel_chooser(spec.search.channel_importance, lambda method: cached_score(
        ScoreCache(run.files.scores), model, splits, method,
        scored_dataset(spec), groups, blocks))
    baseline = dict(get_job(runtime.engine, run.job.id).baseline or {})
    return SearchContext(spec=spec, model=model, splits=splits,
                         space=SearchSpace.from_spec(groups, blocks, spec.search,
                                                     round_to=round_to),
                         baseline=baseline, device=runtime.device.name,
                         importance_factory=factory, cancel_event=run.cancel,
                         worker=runtime.worker_id)
