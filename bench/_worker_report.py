"""The tables of ``bench/workers.py``: trials per minute by worker count, the service's
overhead over a plain script, and how busy the rest of the machine was."""

from __future__ import annotations

import os
from collections.abc import Callable
from statistics import median
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.workers import JobTiming, ScalingRun


def scaling_lines(runs: list[ScalingRun]) -> list[str]:
    lines = ["| workers | trials | tuned | dup | surplus | failed | mean MMACs | search s | "
             "trials/min | per worker | trial s | fine-tune s | gap s | worker cores | "
             "CPU s/trial | other cores |",
             "|---------|--------|-------|-----|---------|--------|------------|----------|"
             "------------|------------|---------|-------------|-------|--------------|"
             "-------------|-------------|"]
    for run in runs:
        s = run.stats
        lines.append(f"| {run.workers:>7} | {s.finished:>6} | {s.fine_tuned:>5} | "
                     f"{s.duplicates:>3} | {s.surplus:>7} | {s.failed:>6} | "
                     f"{s.mean_macs / 1e6:>10.2f} | {s.seconds:>8.1f} | {s.per_minute:>10.2f} | "
                     f"{'+'.join(map(str, s.by_worker)):>10} | {s.trial_seconds:>7.2f} | "
                     f"{s.fine_tune_seconds:>11.2f} | {s.gap_seconds:>5.2f} | "
                     f"{run.worker_cores:>12.2f} | {run.cpu_per_trial:>11.2f} | "
                     f"{run.other_cores:>11.2f} |")

    def middle(workers: int, value: Callable[[ScalingRun], float]) -> float:
        return median(value(run) for run in runs if run.workers == workers)

    one, two = (middle(n, lambda run: run.stats.per_minute) for n in (1, 2))
    cores = {n: middle(n, lambda run: run.worker_cores) for n in (1, 2)}
    cpu = {n: middle(n, lambda run: run.cpu_per_trial) for n in (1, 2)}
    verdict = "met" if two / one >= 1.8 else "MISSED"
    lines += ["", "| workers | median trials/min | ratio | goal | median worker cores | "
                  "median CPU s per trial |",
              "|---------|-------------------|-------|------|---------------------|"
              "------------------------|",
              f"| 1 | {one:.2f} | 1.00 | | {cores[1]:.2f} | {cpu[1]:.2f} |",
              f"| 2 | {two:.2f} | {two / one:.2f} | >= 1.8 {verdict} | {cores[2]:.2f} | "
              f"{cpu[2]:.2f} (x{cpu[2] / cpu[1]:.2f}) |",
              "", f"2 workers got x{cores[2] / cores[1]:.2f} the CPU of 1 worker and spent "
                  f"x{cpu[2] / cpu[1]:.2f} the CPU per trial: " + (
                      "the code costs no more per trial with 2 workers; the ratio follows the "
                      "CPU the machine gave them" if cpu[2] / cpu[1] <= 1.1 else
                      "2 workers cost more CPU per trial; see gap s and --profile")]
    return lines


def overhead_lines(runs: list[JobTiming]) -> list[str]:
    lines = ["| run | queued s | prepare s | search s | finalize s | total s | worker CPU s | "
             "API CPU s | trials | other cores |",
             "|-----|----------|-----------|----------|------------|---------|--------------|"
             "-----------|--------|-------------|"]
    for run in runs:
        p = run.phases
        lines.append(f"| {run.label} | {p['queued']:.2f} | {p['prepare']:.1f} | "
                     f"{p['search']:.1f} | {p['finalize']:.1f} | {p['total']:.1f} | "
                     f"{p['cpu']:.1f} | {p['api_cpu']:.1f} | {len(run.plans)} | "
                     f"{p['other_cores']:.2f} |")
    plain = [r for r in runs if r.label == "plain script"]
    served = [r for r in runs if r.label != "plain script"]

    def ratio(key: str) -> float:
        return median(r.phases[key] for r in served) / median(r.phases[key] for r in plain)

    cpu = (median(r.phases["cpu"] + r.phases["api_cpu"] for r in served)
           / median(r.phases["cpu"] for r in plain))
    same = sum(a == b for a, b in zip(plain[0].plans, served[0].plans, strict=False))
    lines += ["", f"median wall time, API + worker / plain script = {ratio('total'):.3f} "
                  f"(goal <= 1.05: {'met' if ratio('total') <= 1.05 else 'MISSED'}); by phase: "
                  + ", ".join(f"{phase} x{ratio(phase):.3f}"
                              for phase in ("prepare", "search", "finalize")),
              f"median CPU seconds, (worker + API) / plain script = {cpu:.3f} (robust to other "
              "processes; PostgreSQL's own CPU not counted on either side)",
              f"same trials: {same} of {len(plain[0].plans)} trial plans identical, in order "
              "(same seed, same warm-start plans)"]
    return lines


def contention_line(label: str, other_cores: list[float]) -> str:
    busiest = max(other_cores, default=0.0)
    verdict = ("CONTENDED: other processes held cores while workers ran" if busiest > 0.3
               else "uncontended")
    return (f"{label}: rest of the machine used {median(other_cores):.2f} cores (median, up to "
            f"{busiest:.2f}) of {os.cpu_count()}: {verdict}")
