"""Where a worker's time goes per trial: a cProfile dump summarised by the
functions a trial is made of (``bench/workers.py --profile``)."""

from __future__ import annotations

from pathlib import Path

#: (label, file suffix, function, caller (file suffix, function) or None)
PROFILED = [
    ("whole trial (Objective.__call__)", "search/objective.py", "__call__", None),
    ("  fine-tune", "search/objective.py", "_fine_tune", None),
    ("  evaluate, before + after fine-tune", "models/train.py", "evaluate",
     ("search/objective.py", "__call__")),
    ("  cost: FLOPs, memory, latency runs", "search/costs.py", "trial_costs", None),
    ("    latency reuse lookup (get_trials)", "search/costs.py", "_finished_trial_latency",
     None),
    ("  apply_plan (Torch-Pruning)", "models/plan.py", "apply_plan",
     ("search/objective.py", "__call__")),
    ("  deepcopy of the baseline", "copy.py", "deepcopy", ("search/objective.py", "__call__")),
    ("  claim_trial_slot (get_trials)", "search/budget.py", "claim_trial_slot", None),
    ("  space.suggest (sampler)", "search/space.py", "suggest", None),
    ("  set_user_attr / set_constraint", "optuna/trial/_trial.py", "set_user_attr",
     ("search/objective.py", "__call__")),
    ("after-trial callback (progress, event)", "workers/search_phase.py", "after_trial", None),
    ("  progress_of (get_trials)", "workers/progress.py", "progress_of", None),
    ("run_trials loop: budget_reached", "search/budget.py", "budget_reached", None),
    ("run_trials loop: budget_taken", "search/budget.py", "budget_taken", None),
    ("run_trials loop: sleeping (waiting)", "~", "<built-in method time.sleep>",
     ("search/study.py", "run_trials")),
    ("study.optimize outside the objective", "optuna/study/study.py", "optimize", None),
    ("search_context (load data, model, scores)", "workers/context.py", "search_context", None),
]


def profile_table(path: Path, trials: int) -> list[str]:
    """Cumulative seconds of the functions that make up a trial, from a cProfile dump."""
    import pstats

    table = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]

    def seconds(suffix: str, name: str, caller: tuple[str, str] | None) -> float:
        total = 0.0
        for (file, _line, function), (_cc, _nc, _tt, cumulative, callers) in table.items():
            if function != name or not file.endswith(suffix):
                continue
            if caller is None:
                total += cumulative
            else:
                total += sum(row[3] for key, row in callers.items()
                             if key[2] == caller[1] and key[0].endswith(caller[0]))
        return total

    rows = {label: seconds(suffix, name, caller) for label, suffix, name, caller in PROFILED}
    rows["study.optimize outside the objective"] -= rows["whole trial (Objective.__call__)"]
    lines = [f"| {'where (one worker, cProfile)':<42} | total s | s / trial |",
             f"|{'-' * 44}|---------|-----------|"]
    lines += [f"| {label:<42} | {value:>7.2f} | {value / trials:>9.3f} |"
              for label, value in rows.items()]
    return lines
