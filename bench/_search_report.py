"""Tables and goal verdicts of ``bench/search_quality.py`` from its raw outcomes.

Every outcome is one row, one target, one seed: its test accuracy (None when it
delivered nothing), the fine-tune steps it spent (``trial_steps``: short
fine-tunes; ``rerank_steps``; ``final_steps``) and, for a search, its curve: after
every trial, the steps spent so far and the best validation accuracy of a
deliverable trial at the trial fidelity (the short fine-tune), which is what the
search itself sees while it runs.

"Compute to get there": for seed s, (a)'s level is its final best trial-fidelity
validation accuracy less 0.5 point; a row needs the steps spent when its own
best-so-far first reaches that level (never within its trial phase: more than
the steps it had). The goal asks (a)'s steps, mean over seeds, to be at most half
of (d)'s.

Seed noise: beside the verdict on the means, each row's difference from (a) with a
Welch 95% interval over the seeds (``scipy.stats.ttest_ind``, unequal variances):
with three seeds a row whose interval holds 0 is not told apart from (a).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from scipy import stats

WITHIN = 0.005
ROW_A, ROW_D, ROW_E = "(a) TPE warm", "(d) random", "(e) uniform L1"


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    known = [v for v in values if v is not None]
    if not known or len(known) < len(values):
        return None, None
    return statistics.mean(known), (statistics.stdev(known) if len(known) > 1 else 0.0)


def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"


def steps_to(curve: Sequence[Sequence[Any]], level: float) -> int | None:
    """Steps spent when the best-so-far first reached ``level`` (None: never)."""
    for steps, best in curve:
        if best is not None and best >= level - 1e-12:
            return int(steps)
    return None


def _level(outcome: dict[str, Any] | None) -> float | None:
    """(a)'s final best trial-fidelity validation accuracy, less 0.5 point."""
    if not outcome or not outcome.get("curve"):
        return None
    finals = [best for _, best in outcome["curve"] if best is not None]
    return max(finals) - WITHIN if finals else None


def _reach(outcome: dict[str, Any], level: float | None) -> tuple[float | None, bool]:
    """Steps to ``level`` and whether that is a lower bound (never reached)."""
    if level is None or not outcome.get("curve"):
        return None, False
    steps = steps_to(outcome["curve"], level)
    return (float(outcome["trial_steps"]), True) if steps is None else (float(steps), False)


def summarise(results: list[dict[str, Any]], rows: Sequence[str], target: int,
              baseline_test: float) -> dict[str, dict[str, Any]]:
    """Per row at one target: accuracy mean and std over seeds, drop, steps, reach."""
    at = [r for r in results if r["target"] == target]
    a_by_seed = {r["seed"]: r for r in at if r["row"] == ROW_A}
    summary: dict[str, dict[str, Any]] = {}
    for row in rows:
        outcomes = sorted((r for r in at if r["row"] == row), key=lambda r: r["seed"])
        if not outcomes:
            continue
        mean, std = _mean_std([o["test"] for o in outcomes])
        reaches = [_reach(o, _level(a_by_seed.get(o["seed"]))) for o in outcomes]
        trials = [o.get("trials", []) for o in outcomes]
        summary[row] = {
            "seeds": [o["seed"] for o in outcomes], "tests": [o["test"] for o in outcomes],
            "mean": mean, "std": std,
            "drop": None if mean is None else baseline_test - mean,
            "flops": _mean_std([o.get("flops") for o in outcomes])[0],
            "latency": _mean_std([o.get("latency") for o in outcomes])[0],
            "search_steps": statistics.mean(o["trial_steps"] + o["rerank_steps"]
                                            for o in outcomes),
            "trial_steps": statistics.mean(o["trial_steps"] for o in outcomes),
            "final_steps": statistics.mean(o["final_steps"] for o in outcomes),
            "total_steps": statistics.mean(o["trial_steps"] + o["rerank_steps"]
                                           + o["final_steps"] for o in outcomes),
            "trials": statistics.mean(sum(t["fidelity"] != "long" for t in ts)
                                      for ts in trials),
            "tuned": statistics.mean(sum(t["fidelity"] == "short" for t in ts)
                                     for ts in trials),
            "reach": (statistics.mean(s for s, _ in reaches)
                      if all(s is not None for s, _ in reaches) else None),
            "reach_bound": any(bound for _, bound in reaches),
            "minutes": statistics.mean(o["seconds"] for o in outcomes) / 60,
            "missing": sum(o["test"] is None for o in outcomes)}
    return summary


def verdicts(summary: dict[str, dict[str, Any]], label: str) -> list[str]:
    """The goal lines of one target."""
    lines = []
    a = summary.get(ROW_A)
    if a is None:
        return [f"{label}: row (a) did not run"]
    better = [f"{row} ({_pct(s['mean'])} vs {_pct(a['mean'])})"
              for row, s in summary.items() if row != ROW_A and s["mean"] is not None
              and (a["mean"] is None or s["mean"] > a["mean"])]
    empty = [f"{row} ({s['missing']} of {len(s['tests'])})" for row, s in summary.items()
             if s["missing"]]
    if empty:
        lines.append(f"{label}: delivered no model (no plan met the target, or the final "
                     f"timing missed it) in some seeds: {', '.join(empty)}; a row without a "
                     "model in every seed has no mean and is not compared")
    lines.append(f"{label}: (a) at or above every other row (mean over seeds): "
                 + ("MET" if not better and a["mean"] is not None
                    else "NOT MET, above it: " + (", ".join(better) or "(a) has no model")))
    noise = _differences(a, summary)
    if noise:
        lines.append(f"{label}: (a) minus each row, points, with a Welch 95% interval over "
                     f"the seeds: {noise}")
    e = summary.get(ROW_E)
    if label == "flops 25%" and e is not None:
        met = (a["drop"] is not None and e["drop"] is not None
               and a["drop"] <= 0.5 * e["drop"])
        lines.append(f"{label}: (a)'s drop at most half of (e)'s: {'MET' if met else 'NOT MET'}"
                     f" ((a) {_pct(a['drop'])} pt, (e) {_pct(e['drop'])} pt)")
    d = summary.get(ROW_D)
    if d is not None:
        if a["reach"] is None or d["reach"] is None:
            lines.append(f"{label}: compute to within 0.5 pt of (a)'s best: not measurable")
        else:
            met = a["reach"] <= 0.5 * d["reach"]
            bound = ">= " if d["reach_bound"] else ""
            verdict = "MET" if met else ("NOT SHOWN" if d["reach_bound"] else "NOT MET")
            lines.append(f"{label}: (a) within 0.5 pt of its final best with at most half the "
                         f"steps (d) needs: {verdict} ((a) "
                         f"{a['reach']:.0f} steps, (d) {bound}{d['reach']:.0f})"
                         + (" (d) never got there in some seed, its steps are a lower bound"
                            if d["reach_bound"] else ""))
    return lines


def _differences(a: dict[str, Any], summary: dict[str, dict[str, Any]]) -> str:
    """``row d [low, high]`` for every row with a model in each seed: (a)'s mean less the
    row's, and the Welch 95% interval of that difference."""
    if a["mean"] is None or len(a["tests"]) < 2:
        return ""
    parts = []
    for row, s in summary.items():
        if row == ROW_A or s["mean"] is None or len(s["tests"]) < 2:
            continue
        difference = 100 * (a["mean"] - s["mean"])
        if a["std"] == 0 and s["std"] == 0:
            parts.append(f"{row} {difference:+.2f} (no spread)")
            continue
        interval = stats.ttest_ind([100 * t for t in a["tests"]], [100 * t for t in s["tests"]],
                                   equal_var=False).confidence_interval(0.95)
        parts.append(f"{row} {difference:+.2f} [{interval.low:+.2f}, {interval.high:+.2f}]")
    return "; ".join(parts)


def table(summary: dict[str, dict[str, Any]], label: str, baseline_test: float) -> str:
    """One target's markdown table."""
    lines = [f"### {label} (unpruned baseline: test {_pct(baseline_test)}%)", "",
             "| row | test acc % (mean ± std) | drop pt | per seed | FLOPs | latency | "
             "steps: search + final = total | trials (fine-tuned) | steps to (a)'s level "
             "| min/seed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row, s in summary.items():
        accuracy = ("-" if s["mean"] is None
                    else f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}")
        seeds = " ".join("none" if t is None else _pct(t) for t in s["tests"])
        reach = ("-" if s["reach"] is None
                 else f"{'>= ' if s['reach_bound'] else ''}{s['reach']:.0f}")
        trials = "-" if not s["trials"] else f"{s['trials']:.1f} ({s['tuned']:.1f})"
        flops = "-" if s["flops"] is None else f"{s['flops']:.3f}"
        latency = "-" if s["latency"] is None else f"{s['latency']:.3f}"
        lines.append(
            f"| {row} | {accuracy} | {_pct(s['drop'])} | {seeds} | {flops} | {latency} | "
            f"{s['search_steps']:.0f} + {s['final_steps']:.0f} = {s['total_steps']:.0f} | "
            f"{trials} | {reach} | {s['minutes']:.1f} |")
    return "\n".join(lines)


def report(results: list[dict[str, Any]], rows: Sequence[str],
           targets: Sequence[tuple[int, str]], baseline: dict[str, Any],
           header: str) -> tuple[str, dict[str, Any]]:
    """The whole markdown report and the verdicts by target."""
    baseline_test = float(baseline["test_accuracy"])
    parts, found = [header, ""], {}
    for index, label in targets:
        summary = summarise(results, rows, index, baseline_test)
        if not summary:
            continue
        lines = verdicts(summary, label)
        found[label] = {"lines": lines, "summary": summary}
        parts += [table(summary, label, baseline_test), "", *[f"- {line}" for line in lines],
                  ""]
    return "\n".join(parts), found
