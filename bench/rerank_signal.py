"""How well the search's ranking signals predict the accuracy a plan ends with.

    python bench/rerank_signal.py [--profile cpu-lean] [--target 0] [--plans N] [--jobs 2]
                                  [--source search_quality_X.json] [--reuse]

The search delivers the plan its re-rank rates best, and the plan then gets the long
final fine-tune; the re-rank is only worth its steps if its ranking predicts what the
final fine-tune reaches. This takes the distinct plans that
``bench/search_quality.py`` re-ranked at one target (its JSON, ``--source``, every row
and seed), plus
the uniform L1 plan at the target, and for each one measures, on the same baseline:

* ``probe``: the adaptive-BatchNorm probe's validation accuracy (no fine-tune), what
  ``search.fidelity.screen: probe`` screens plans by; ``probe_loss``: the negated
  calibration loss of the same probe (``models.probe.adaptive_bn_loss``), what warm-start
  seeding orders plans by;
* ``short``: a trial's short fine-tune (``trial_steps``, one seed), what successive
  halving and the re-rank's choice of candidates go by;
* ``rerank``: the re-rank as ``search.rerank`` runs it (``rerank_factor`` x the trial
  fine-tune, two seeds), mean validation accuracy on the trials' validation images
  (``trial_eval_images``), and the same two networks scored on the whole validation
  split (``rerank_full_val``);
* ``final``: test accuracy (official 10k) after the profile's final fine-tune, distilled,
  going on from the better re-rank seed as a job's does.

Printed: per plan, each signal and the final accuracy; per signal, Spearman's rank
correlation with the final accuracy (scipy), and the final accuracy of the plan each
signal would have picked next to the best plan's. ``--reuse`` takes the re-rank and
final measurements (the expensive part, 90 s a plan) from the run's earlier JSON and
measures only the cheap signals again. Writes
``bench/out/rerank_signal_<profile>-<target>.{md,json}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _search_rows import TARGETS, Setup, final_tune, make_spec, prepare  # noqa: E402
from search_quality import OUT, PROFILES  # noqa: E402

from core.trial import plan_key  # noqa: E402
from models.plan import PrunePlan, apply_plan  # noqa: E402
from models.probe import adaptive_bn_loss, recalibrated  # noqa: E402
from models.train import evaluate, fine_tune  # noqa: E402
from search.objective import Objective, SearchContext  # noqa: E402
from search.rerank import RERANK_SEED_BASE, RERANK_SEEDS  # noqa: E402
from search.space import SearchSpace  # noqa: E402

SIGNALS = ("probe", "probe_loss", "short", "rerank", "rerank_full_val",
           "rerank_best_seed_full_val")
#: What ``--reuse`` takes from an earlier run instead of measuring again.
REUSED = ("rerank", "rerank_full_val", "rerank_best_seed_full_val", "final")
_SETUP: Setup | None = None


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def _start(profile_name: str) -> None:
    global _SETUP
    torch.set_num_threads(1)
    _SETUP = prepare(PROFILES[profile_name], OUT / "cache", log)


def _plans(source: Path, target: int, limit: int | None) -> list[tuple[str, dict]]:
    """The distinct plans a ``search_quality`` run (its JSON, ``source``) re-ranked at
    ``target``, most often re-ranked first, and the uniform plan the search's warm start
    sized to the target."""
    found = json.loads(source.read_text())
    counts: dict[str, int] = {}
    plans: dict[str, tuple[str, dict]] = {}
    for outcome in found["results"]:
        if outcome["target"] != target or not outcome.get("trials"):
            continue
        trials = {t["number"]: t for t in outcome["trials"]}
        for trial in outcome["trials"]:
            uniform = trial["label"].startswith("uniform@")
            if trial["fidelity"] != "long" and not uniform:
                continue
            origin = trials.get(trial["rerank_of"], trial) if not uniform else trial
            plan = {"keep": trial["keep"], "drop_blocks": trial["drop_blocks"]}
            key = json.dumps(plan, sort_keys=True)
            counts[key] = counts.get(key, 0) + (0 if uniform else 1)
            label = origin["label"] or (f"{outcome['row'].split(')')[0]}) seed {outcome['seed']} "
                                           f"#{origin['number']}")
            plans.setdefault(key, (label, plan))
    ordered = sorted(plans, key=lambda k: (-counts[k], k))
    uniform = [k for k in ordered if plans[k][0].startswith("uniform@")][:1]
    chosen = uniform + [k for k in ordered if k not in uniform][:limit]
    return [plans[k] for k in chosen]


def _plan(plan: dict, setup: Setup) -> PrunePlan:
    """A plan from a ``search_quality`` trial log (keep counts and dropped blocks), with the
    channel multiple the profile's searches round to."""
    return PrunePlan.from_dict({**plan, "round_to": setup.round_to()})


def _measure(job: tuple[str, dict, int, dict[str, float] | None]) -> dict[str, Any]:
    label, plan_dict, target, earlier = job
    setup = _SETUP
    assert setup is not None
    profile, device = setup.profile, setup.profile.device
    started = time.perf_counter()
    spec = make_spec(profile, TARGETS[target][1], "tpe", None, 0)
    plan = _plan(plan_dict, setup)
    space = SearchSpace.from_spec(setup.groups, setup.blocks, spec.search,
                                  round_to=setup.round_to())
    objective = Objective(SearchContext(spec=spec, model=setup.model, splits=setup.splits,
                                        space=space, baseline=dict(setup.baseline),
                                        device=device))
    example = setup.splits.example_input().to(device)
    pruned = apply_plan(copy.deepcopy(setup.model), plan, example)
    probe = evaluate(recalibrated(pruned, setup.splits), objective.scored, "val", device)
    cheap = {"probe": probe, "probe_loss": -adaptive_bn_loss(pruned, setup.splits)}
    short = copy.deepcopy(pruned)  # as search.objective's trial fine-tune (seed: trial 0's)
    history = fine_tune(short, objective.scored, **spec.fine_tune.trial_budget(),
                        seed=spec.seed, device=device, **spec.fine_tune.training_settings())
    cheap["short"] = float(history["val_accuracy"][-1])
    common = {"label": label, "plan": plan_dict, "key": plan_key(plan.to_dict()),
              "dropped": len(plan.drop_blocks), **cheap}
    if earlier is not None:
        return {**common, **{name: earlier[name] for name in REUSED},
                "seconds": time.perf_counter() - started}
    seeds = []
    for k in range(RERANK_SEEDS):
        accuracy, model = objective.fine_tuned(plan, spec.search.fidelity.rerank_factor,
                                               spec.seed + RERANK_SEED_BASE + k)
        seeds.append((accuracy, evaluate(model, setup.splits, "val", device), model))
    better = max(seeds, key=lambda s: s[0])  # as search.rerank_weights keeps it
    final = final_tune(setup, better[2], profile.final_steps, 0)
    return {**common, "rerank": statistics.fmean(s[0] for s in seeds),
            "rerank_full_val": statistics.fmean(s[1] for s in seeds),
            "rerank_best_seed_full_val": better[1], "final": final,
            "seconds": time.perf_counter() - started}


def _report(rows: list[dict[str, Any]], header: str) -> str:
    lines = [header, "", "| plan | blocks dropped | " + " | ".join(SIGNALS) + " | final test |",
             "|---|---|" + "---|" * len(SIGNALS) + "---|"]
    for row in sorted(rows, key=lambda r: -r["final"]):
        lines.append(f"| {row['label']} | {row['dropped']} | "
                     + " | ".join(f"{row[s]:.3f}" if s == "probe_loss" else f"{100 * row[s]:.2f}"
                                  for s in SIGNALS)
                     + f" | {100 * row['final']:.2f} |")
    best = max(r["final"] for r in rows)
    lines += ["", "| signal | Spearman with final test | p | its pick's final test | "
              "best final test |", "|---|---|---|---|---|"]
    for signal in SIGNALS:
        rho, p = spearmanr([r[signal] for r in rows], [r["final"] for r in rows])
        pick = max(rows, key=lambda r: r[signal])
        lines.append(f"| {signal} | {rho:+.2f} | {p:.2f} | {100 * pick['final']:.2f} "
                     f"({pick['label']}) | {100 * best:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu-lean")
    parser.add_argument("--target", type=int, default=0)
    parser.add_argument("--plans", type=int, default=None, help="at most this many plans "
                        "besides the uniform one (the most often re-ranked)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--source", default=None, help="the search_quality JSON whose "
                        "re-ranked plans are measured (default: the profile's)")
    parser.add_argument("--reuse", action="store_true", help="re-rank and final "
                        "measurements from the earlier JSON; measure the cheap signals only")
    args = parser.parse_args()
    profile = PROFILES[args.profile]
    path = OUT / f"rerank_signal_{profile.name}-{args.target}"
    earlier = ({row["key"]: row for row in json.loads(path.with_suffix(".json").read_text())[
        "rows"]} if args.reuse else {})
    source = Path(args.source or OUT / f"search_quality_{profile.name}.json")
    plans = _plans(source, args.target, args.plans)
    log(f"{len(plans)} plans at {TARGETS[args.target][0]}")
    context = multiprocessing.get_context("spawn")
    started = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)
    # Trains and caches the baseline once (on every core), before the workers load it.
    setup = prepare(profile, OUT / "cache", log)
    jobs = [(label, plan, args.target, earlier.get(plan_key(_plan(plan, setup).to_dict())))
            for label, plan in plans]
    with ProcessPoolExecutor(args.jobs, mp_context=context, initializer=_start,
                             initargs=(profile.name,)) as pool:
        rows = []
        for row in pool.map(_measure, jobs):
            log(f"{row['label']}: " + ", ".join(f"{s} {row[s]:.4f}" for s in SIGNALS)
                + f", final {row['final']:.4f} ({row['seconds']:.0f} s)")
            rows.append(row)
    header = (f"## rerank_signal, profile {profile.name}, {TARGETS[args.target][0]}: "
              f"{len(rows)} plans (the distinct plans re-ranked in {source.name}, and uniform "
              f"L1's)\n\nBaseline test {setup.baseline['test_accuracy']:.2%}. Signals in % "
              f"validation accuracy: probe (no fine-tune; probe_loss: minus its calibration "
              f"loss), short (one {profile.trial_steps}-step trial fine-tune) and the re-rank "
              f"({RERANK_SEEDS} seeds x {profile.rerank_factor:g} x {profile.trial_steps} "
              f"steps) on {profile.trial_eval_images} images, the re-rank on the whole "
              f"validation split ({len(setup.splits.val)} images); final: test % after "  # type: ignore[arg-type]
              f"{profile.final_steps} distilled steps from the better re-rank seed"
              + (" (re-rank and final from the earlier run, --reuse)" if args.reuse else "")
              + f". {(time.perf_counter() - started) / 60:.0f} min.")
    text = _report(rows, header)
    path.with_suffix(".json").write_text(json.dumps({"rows": rows}, indent=1))
    path.with_suffix(".md").write_text(text + "\n")
    print("\n" + text, flush=True)


if __name__ == "__main__":
    main()
