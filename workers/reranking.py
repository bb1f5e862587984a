"""Multi-fidelity's last rung, run by the finalising worker before it picks the plan.

``search.rerank`` fine-tunes the best plans longer with two seeds and adds each
result to the study. It runs at the start of FINALIZING, so a worker that takes
over a finalising job whose worker died re-ranks what is left (a plan already
re-ranked is not re-ranked again) before the best re-rank is finalised. With a
latency limit, each candidate's network is first timed as delivery will time it
(``search.final_timing``): a plan that would fail delivery is not re-ranked. Each
re-ranked plan's better seed's weights are kept for the final fine-tune to go on from
(``search.rerank_weights``).
"""

from __future__ import annotations

import optuna

from core.trial import HEADLINE_FIELDS, TrialRecord
from search.final_timing import FinalTimer
from search.objective import Objective, SearchContext
from search.rerank import RERANK_SEEDS, rerank
from search.rerank_weights import RerankWeights
from workers.runtime import JobRun, WorkerRuntime


def rerank_best(runtime: WorkerRuntime, run: JobRun, study: optuna.Study,
                context: SearchContext, timer: FinalTimer, weights: RerankWeights) -> None:
    """Re-rank the job's best plans when its search is multi-fidelity, logging each;
    ``timer`` is the final timing delivery will use, ``weights`` keeps what the re-rank
    trained for the final fine-tune."""
    fidelity = run.spec.search.fidelity
    if fidelity.mode != "multi" or not fidelity.rerank:
        return
    runtime.phase(run, f"re-ranking the {fidelity.rerank} best plans: {fidelity.rerank_factor:g}"
                       f" times the trial fine-tune, {RERANK_SEEDS} seeds")
    outcome = rerank(study, Objective(context), timer, weights)
    for number, missed in outcome.skipped.items():
        runtime.event(run, "trial", f"trial {number}'s plan is not re-ranked: its network "
                      "misses " + ", ".join(f"{name} by {value:.1%}"
                                            for name, value in missed.items())
                      + " when timed as the delivered model will be",
                      {"number": number, "skipped": "final timing", "missed": missed})
    for number in outcome.added:
        record = TrialRecord.from_trial(study.trials[number])
        runtime.event(run, "trial", f"trial {number} re-ranks trial {record.rerank_of}: "
                      f"accuracy {record.accuracy or 0:.3f} "
                      f"(seeds {', '.join(f'{a:.3f}' for a in record.accuracy_seeds or [])})",
                      {"number": number, "state": "COMPLETE", "worker": runtime.worker_id,
                       **record.model_dump(include=set(HEADLINE_FIELDS - {"plan"}))})
