"""Rebuild, in any worker, what the trials of a searching job need."""

from __future__ import annotations

import json
from dataclasses import dataclass

from torch import Tensor, nn

from core.spec import JobSpec
from models.datasets import DataSplits
from models.importance import ScoreCache, cached_score, dataset_identity
from models.plan import BlockInfo, GroupInfo, prunable_groups, removable_blocks
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


@dataclass(frozen=True)
class JobNetwork:
    """The job's trained baseline on the worker's device and its pruning structure.

    Attributes:
        model: the baseline network (``workers.baseline``).
        example: one input batch on the worker's device.
        round_to: the channel multiple widths keep (``JobSpec.channel_multiple``).
        groups, blocks: its prunable groups and removable blocks.
    """

    model: nn.Module
    example: Tensor
    round_to: int
    groups: list[GroupInfo]
    blocks: list[BlockInfo]

    def space(self, spec: JobSpec) -> SearchSpace:
        return SearchSpace.from_spec(self.groups, self.blocks, spec.search,
                                     round_to=self.round_to)


def job_network(runtime: WorkerRuntime, run: JobRun, splits: DataSplits) -> JobNetwork:
    """The baseline (trained or loaded once per job) and its groups and blocks."""
    spec = run.spec
    model = baseline_model(runtime, run, splits)
    example = splits.example_input().to(runtime.device.name)
    round_to = spec.channel_multiple(runtime.device.type)
    groups = prunable_groups(model, example, round_to=round_to,
                             min_keep_ratio=spec.search.min_keep_ratio)
    return JobNetwork(model, example, round_to, groups, removable_blocks(model, example))


def search_context(runtime: WorkerRuntime, run: JobRun) -> SearchContext:
    """The baseline from the job's file, the baseline metrics from the job row, and
    what chooses the channels each group loses: L1 magnitude (Torch-Pruning's
    default) or, with ``search.channel_importance`` naming a scorer, its scores
    (from the cache; computed here if the warm start did not use that scorer)."""
    spec = run.spec
    splits = runtime.load_data(spec)
    network = job_network(runtime, run, splits)
    factory = channel_chooser(spec.search.channel_importance, lambda method: cached_score(
        ScoreCache(run.files.scores), network.model, splits, method,
        scored_dataset(spec), network.groups, network.blocks))
    baseline = dict(get_job(runtime.engine, run.job.id).baseline or {})
    return SearchContext(spec=spec, model=network.model, splits=splits,
                         space=network.space(spec), baseline=baseline, device=runtime.device.name,
                         importance_factory=factory, cancel_event=run.cancel,
                         worker=runtime.worker_id)
