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
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import optuna
from optuna.trial import TrialState, create_trial

from core.trial import TrialRecord, plan_key
from models.plan import PrunePlan
from search.objective import Objective, objective_values
from search.result import deliverable_trials, each_plan_once

__all__ = ["RERANK_OF_ATTR", "RERANK_SEEDS", "rerank"]

#: User attribute of a re-rank trial: the number of the trial whose plan it re-measured
#: (``TrialRecord.rerank_of``).
RERANK_OF_ATTR = "rerank_of"
#: Seeds of every re-rank fine-tune.
RERANK_SEEDS = 2
#: Re-rank seeds are ``spec.seed + RERANK_SEED_BASE + k``: never a trial's own seed.
RERANK_SEED_BASE = 1_000_003


def rerank(study: optuna.Study, objective: Objective) -> list[int]:
    """Re-rank the best short-fidelity plans (see the module docstring).

    Returns:
        the numbers of the trials added, one per plan re-ranked now.
    """
    spec = objective.context.spec
    fidelity = spec.search.fidelity
    if fidelity.mode != "multi" or fidelity.rerank == 0:
        return []
    deliverable = deliverable_trials(study)
    candidates = [trial for trial in deliverable if trial.record.fidelity != "long"]
    # One plan is re-ranked once: trials that measured the same plan (``duplicate_of``)
    # count as one, and a plan already re-ranked (its re-rank trial has its plan) is not
    # again.
    done = {plan_key(trial.plan) for trial in deliverable if trial.record.fidelity == "long"}
    best = sorted(candidates, key=lambda trial: (-trial.values[0], trial.number))
    frozen = {trial.number: trial for trial in study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE,))}
    added = []
    for source in each_plan_once(best)[:fidelity.rerank]:
        if plan_key(source.plan) in done:
            continue
        plan = PrunePlan.from_dict(source.plan)
        started = time.perf_counter()
        accuracies = [objective.fine_tuned_accuracy(plan, fidelity.rerank_factor,
                                                    spec.seed + RERANK_SEED_BASE + seed)
                      for seed in range(RERANK_SEEDS)]
        record: dict[str, Any] = {
            **source.record.model_dump(exclude={"feasible"}),
            "accuracy": statistics.fmean(accuracies), "accuracy_seeds": accuracies,
            "fidelity": "long", "rerank_of": source.number,
            "fine_tune_seconds": time.perf_counter() - started}
        stored = TrialRecord.model_validate(record)
        original = frozen[source.number]
        values = objective_values(spec, record, objective.context.baseline)
        study.add_trial(create_trial(
            state=TrialState.COMPLETE,
            values=values if isinstance(values, list) else [float(values)],
            params=original.params, distributions=original.distributions,
            user_attrs=stored.model_dump(exclude={"violations", "feasible"}, exclude_none=True),
            constraints=stored.violations or None))
        added.append(max(trial.number for trial in study.get_trials(deepcopy=False)))
    return added
