"""Multi-fidelity's last rung: the best plans fine-tuned longer, with two seeds.

A short fine-tune ranks plans by how fast they recover as much as by how good
they are, and one seed's accuracy is noisy. With ``search.fidelity`` multi, once
the search has its trials, the ``rerank`` best deliverable plans are fine-tuned
again for ``rerank_factor`` times the trial fine-tune, once with each of
``RERANK_SEEDS`` seeds, and each result is added to the study as a trial of its
own (Optuna's ``add_trial``: the source trial's parameters, the mean accuracy as
its value, ``fidelity: long``, ``rerank_of`` naming the source). The finalised
plan is then the best of those (``search.result``). A plan already re-ranked is
not re-ranked again, so a worker that takes over a job repeats no work.

A trial's latency is one short timing; the delivered model must pass the final
timing (``search.final_timing``: rounds side by side until the ratio is stable), and a
plan rated best a few percent under a latency limit can fail it, leaving delivery a
fallback the re-rank never measured. So when the job has a latency limit and a
``FinalTimer`` is given, each candidate's network is timed as delivery will time it
before its fine-tunes: a plan that misses is skipped (the next best takes its place,
at most ``MAX_TIMED_PER_PLACE`` candidates timed per place), and a re-rank trial
records the final timing's latency instead of its source's.

The weights of each re-ranked plan's better seed are kept (``search.rerank_weights``)
when the caller asks: the final fine-tune of that plan goes on from them, so the
re-rank's steps are not spent only on ranking.
"""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState, create_trial

from core.limits import Limit, active_limits, missed_limits, violations
from core.trial import TrialRecord, plan_key
from models.plan import PrunePlan
from search.final_timing import FinalTimer
from search.objective import Objective, objective_values
from search.rerank_weights import RerankWeights
from search.result import deliverable_trials, each_plan_once

__all__ = ["MAX_TIMED_PER_PLACE", "RERANK_OF_ATTR", "RERANK_SEEDS", "Reranked", "rerank"]

#: User attribute of a re-rank trial: the number of the trial whose plan it re-measured
#: (``TrialRecord.rerank_of``).
RERANK_OF_ATTR = "rerank_of"
#: Seeds of every re-rank fine-tune.
RERANK_SEEDS = 2
#: Re-rank seeds are ``spec.seed + RERANK_SEED_BASE + k``: never a trial's own seed.
RERANK_SEED_BASE = 1_000_003
#: Candidates whose networks are timed, per re-rank place, before the re-rank gives up
#: on filling its places with plans that pass the final timing.
MAX_TIMED_PER_PLACE = 3
# The final timing's fields a trial record keeps (the rest describe the timing's rounds).
_LATENCY_FIELDS = ("latency_ms", "latency_p90_ms", "latency_ratio", "latency_raw_ms",
                   "latency_retimed", "latency_runtime")


@dataclass
class Reranked:
    """What one ``rerank`` did.

    Attributes:
        added: the numbers of the trials added, one per plan re-ranked now.
        skipped: trials whose plans missed a limit in the final timing and were not
            re-ranked: number -> the limits missed, ``value / limit - 1``.
    """

    added: list[int] = field(default_factory=list)
    skipped: dict[int, dict[str, float]] = field(default_factory=dict)


def rerank(study: optuna.Study, objective: Objective, timer: FinalTimer | None = None,
           weights: RerankWeights | None = None) -> Reranked:
    """Re-rank the best short-fidelity plans (see the module docstring).

    Args:
        study: the job's study.
        objective: the job's objective (context: spec, unpruned network, data, baseline).
        timer: the final timing; given, and with a latency limit, a candidate is
            re-ranked only when its network passes it.
        weights: given, keeps each re-ranked plan's better seed's weights for the final
            fine-tune to go on from (``search.rerank_weights``).
    """
    spec = objective.context.spec
    fidelity = spec.search.fidelity
    outcome = Reranked()
    if fidelity.mode != "multi" or fidelity.rerank == 0:
        return outcome
    limits = active_limits(spec.objective.constraints, objective.context.baseline)
    if not any(limit.metric == "latency_ms" for limit in limits):
        timer = None
    deliverable = deliverable_trials(study)
    candidates = [trial for trial in deliverable if trial.record.fidelity != "long"]
    # One plan is re-ranked once: trials that measured the same plan (``duplicate_of``)
    # count as one, and a plan already re-ranked (its re-rank trial has its plan) is not
    # again.
    done = {plan_key(trial.plan) for trial in deliverable if trial.record.fidelity == "long"}
    best = sorted(candidates, key=lambda trial: (-trial.values[0], trial.number))
    frozen = {trial.number: trial for trial in study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE,))}
    places = fidelity.rerank
    for position, source in enumerate(each_plan_once(best)):
        if position >= places or (
                timer is not None and position >= MAX_TIMED_PER_PLACE * fidelity.rerank):
            break
        if plan_key(source.plan) in done:
            continue
        plan = PrunePlan.from_dict(source.plan)
        timed: dict[str, Any] = {}
        if timer is not None:
            timed = _final_latency(timer, objective, plan, limits)
            missed = missed_limits(limits, {**source.record.model_dump(), **timed})
            if missed:
                outcome.skipped[source.number] = missed
                places += 1  # the next best plan takes its place
                continue
        started = time.perf_counter()
        accuracies = []
        for seed in range(RERANK_SEEDS):
            accuracy, model = objective.fine_tuned(plan, fidelity.rerank_factor,
                                                   spec.seed + RERANK_SEED_BASE + seed)
            accuracies.append(accuracy)
            if weights is not None:
                weights.offer(plan_key(source.plan), model, accuracy)
            del model
        record: dict[str, Any] = {
            **source.record.model_dump(exclude={"feasible"}),
            "accuracy": statistics.fmean(accuracies), "accuracy_seeds": accuracies,
            "fidelity": "long", "rerank_of": source.number,
            "fine_tune_seconds": time.perf_counter() - started}
        if timed:
            record.update({**timed, "latency_reused": None, "latency_seeded": None,
                           "violations": violations(limits, {**record, **timed})})
        stored = TrialRecord.model_validate(record)
        original = frozen[source.number]
        values = objective_values(spec, record, objective.context.baseline)
        study.add_trial(create_trial(
            state=TrialState.COMPLETE,
            values=values if isinstance(values, list) else [float(values)],
            params=original.params, distributions=original.distributions,
            user_attrs=stored.model_dump(exclude={"violations", "feasible"}, exclude_none=True),
            constraints=stored.violations or None))
        outcome.added.append(max(trial.number for trial in study.get_trials(deepcopy=False)))
    return outcome


def _final_latency(timer: FinalTimer, objective: Objective, plan: PrunePlan,
                   limits: list[Limit]) -> dict[str, Any]:
    """``plan``'s latency fields as delivery will time its network (``FinalTimer.plan``)."""
    context = objective.context
    timed = timer.plan(plan, context.example_input().to(context.device),
                       functools.partial(missed_limits, limits),
                       importance_factory=context.importance_factory)
    return {name: timed.record[name] for name in _LATENCY_FIELDS if name in timed.record}
