"""PREPARING: data, baseline, its metrics, importance scores, the study, warm start.

Every step is idempotent, so a worker that resumes a job whose earlier
worker died (or a finalising job that was re-queued) redoes only what is
missing: the baseline file, the stored baseline metrics, the score cache and
the study (enqueued plans are not queued twice) are all reused.
"""

from __future__ import annotations

from models.importance import ImportanceScores, ScoreCache, cached_score
from search.costs import LatencyCache
from search.objective import latency_counts, measure_baseline
from search.seeding import PlanProbe, seed_plans, target_ratio
from search.space import SearchSpace
from search.study import enqueue_plans, open_study, study_name_for
from service.jobs import JobStatus, set_baseline, set_study_name, transition
from workers.context import job_network, scored_dataset
from workers.runtime import JobRun, WorkerRuntime


def prepare(runtime: WorkerRuntime, run: JobRun) -> None:
    """Take a claimed (``preparing``) job to ``searching``."""
    spec, job = run.spec, run.job
    runtime.phase(run, f"loading dataset {spec.dataset.name}")
    splits = runtime.load_data(spec)
    network = job_network(runtime, run, splits)
    model, example, groups, blocks = network.model, network.example, network.groups, \
        network.blocks
    baseline = job.baseline
    if not baseline:
        runtime.phase(run, f"measuring the baseline on {runtime.device.description} "
                           f"({spec.latency.runtime})")
        baseline = {**measure_baseline(model, splits, spec, device=runtime.device.name),
                    "device_description": runtime.device.description,
                    # The original widths, for the job page's channels-kept chart.
                    "groups": [{"name": g.name, "channels": g.channels, "block": g.block}
                               for g in groups],
                    "blocks": [block.name for block in blocks]}
        # A job whose limits or objective time latency here (not on a latency agent) keeps
        # every timing on this device model.
        timed_here = latency_counts(spec) and spec.latency.target is None
        set_baseline(runtime.engine, job.id, baseline, device_type=runtime.device.type,
                     device_model=runtime.device.description if timed_here else None)
        runtime.event(run, "baseline", f"baseline accuracy {baseline['accuracy']:.3f}, "
                      f"latency {baseline['latency_ms']:.2f} ms in {spec.latency.runtime} on "
                      f"{runtime.device.description}, {baseline['flops']:.3g} MACs", baseline)
    cache = ScoreCache(run.files.scores)
    dataset = scored_dataset(spec)
    scores: dict[str, ImportanceScores] = {}
    for method in spec.search.warm_start:
        runtime.phase(run, f"scoring filters and blocks with {method}")
        scores[method] = cached_score(cache, model, splits, method, dataset, groups, blocks)
        runtime.event(run, "scores", f"{method} scores in {scores[method].seconds:.1f} s")
    space = network.space(spec)
    runtime.phase(run, "creating the study and its warm-start trials")
    measured = LatencyCache()
    plans = seed_plans(model, example, groups, space_blocks(space, blocks), scores,
                       target_ratio(spec.objective.constraints, baseline, spec.latency),
                       round_to=space.plan_round_to(),
                       allow_block_removal=spec.search.allow_block_removal,
                       probe=PlanProbe(model, example, splits), measured=measured)
    name = study_name_for(job.id)
    study = open_study(runtime.study_storage(), name, spec)
    queued = enqueue_plans(study, space, plans, measured)
    set_study_name(runtime.engine, job.id, name)
    runtime.event(run, "warm_start", f"{queued} warm-start plans queued",
                  {"plans": [label for label, _ in plans]})
    transition(runtime.engine, job.id, JobStatus.SEARCHING, expected_from=JobStatus.PREPARING,
               worker_id=runtime.worker_id, phase="searching")


def space_blocks(space: SearchSpace, blocks: list) -> list:
    """The removable blocks the search may drop (none when the spec forbids it)."""
    return [block for block in blocks if block.name in space.blocks]
