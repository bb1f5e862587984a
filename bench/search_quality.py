"""Benchmark the search on Fashion-MNIST: does warm-started multi-fidelity TPE find better
pruned networks than the other searches and the one-shot recipes, for the same compute?

    python bench/search_quality.py [--profile quick|cpu|cpu-lean|cpu-56|gpu] [--resume]
                                   [--report-only] [--rows a,d,e] [--targets 0,1,2] [--jobs N]
                                   [--fresh-final] [--no-screen] [--baseline-per-seed]
                                   [--deadline-minutes M]

Data: Fashion-MNIST from its IDX files (``/usr/share/datasets/fashion-mnist``,
Debian's dataset-fashion-mnist): validation (6,000) and calibration (3,000) carved
from the 60,000 training images, the official 10,000 test images whole; the
training split cut to its first N images (a seeded shuffle) in the CPU profiles.
The unpruned network is trained once per profile and cached (with its metrics and
importance scores) under ``bench/out/cache/``, so a rerun skips it; where its weights are
committed under ``bench/baselines/`` (cpu-56's seed-0 ResNet-56, 88.91% test), every host
prunes those, as hosts train different networks from one seed. Every seed prunes
that one network (trained with seed 0), unless ``--baseline-per-seed``: then seed s
prunes a network trained with seed s, so the spread over the seeds holds the
baseline's own (a host with other floating-point kernels trains another seed-0
network: 89.29% to 89.66% test so far), and each row's drop is the mean of each
seed's drop from its own baseline.

Rows, each run as a job runs it (``bench/_search_rows.py``), at 50% and 25% of the
baseline's FLOPs and 50% of its CPU latency (``max_flops_ratio``,
``max_latency_ratio``), for seeds 0, 1, 2:

  (a) TPE warm-started from attention + PLS, ``search.fidelity`` multi: every
      feasible plan screened by the adaptive-BatchNorm probe, reported to Optuna's
      SuccessiveHalvingPruner, short fine-tunes (``trial_steps``) for the plans it
      promotes, the best re-ranked by a longer fine-tune with two seeds (3 at 3x the
      trial fine-tune; cpu-lean 2 at 2x; with a latency limit only plans whose
      networks pass the final timing) (as
      ``workers/reranking.py`` at FINALIZING), the plan a job finalises
      (``search_result``, ``Delivery`` over ``feasible_ranked``, re-timed) fine-tuned;
  (a-attn), (a-pls): (a) warm-started from attention alone, from PLS alone;
  (b) (a) without warm start; (c) GP; (d) random search (both multi-fidelity, cold);
  (e) uniform L1-magnitude pruning at the target, (f) Torch-Pruning's global
      magnitude ranking, stepped as its benchmarks prune to a MACs target: one plan
      each, the largest ratio (the fewest steps) that meets the target as measured.

Equal compute, counted in fine-tune optimiser steps (batch ``batch_size``): every
search row gets ``search_steps`` for its trials' short fine-tunes and its re-rank
fine-tunes together (it stops starting trials when the next short fine-tune would
leave too little for the re-rank: the number of trials follows from the steps, and
probe-screened or infeasible trials cost none), then ``final_steps`` for the final
fine-tune of its chosen plan, which goes on from the re-rank's weights when the plan
was re-ranked, as a job's does (``--fresh-final``: from the pruned weights, an
ablation); a one-shot row fine-tunes its plan for ``search_steps + final_steps``.
Every final fine-tune distils from the unpruned network, as a job's does (the trials'
and the re-rank's do not). Uncounted, the same for every
row of a kind: probes, cost measurements, timing, and for the warm-started rows the
importance scoring (once per baseline, shared by all targets and seeds).

Printed (and written to ``bench/out/search_quality_<profile>.md``, raw numbers to
``.json``): per target, test accuracy mean ± std over the seeds, drop from the
unpruned network's test accuracy, steps spent, and the goal verdicts
(``bench/_search_report.py`` says how "compute to get there" is measured).
Never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _search_oneshot import run_one_shot  # noqa: E402
from _search_report import report  # noqa: E402
from _search_rows import (  # noqa: E402
    ONE_SHOTS,
    SEARCHES,
    TARGETS,
    Profile,
    Setup,
    prepare,
    run_search,
)

OUT = Path(__file__).resolve().parent / "out"
ROWS = (*SEARCHES, *ONE_SHOTS)
_CPU_LEAN = Profile("cpu-lean", "cifar_resnet20", 16, 12000, baseline_epochs=20,
                    trial_steps=20, search_steps=300, final_steps=600,
                    trial_eval_images=1000, seeds=(0, 1, 2), targets=(0, 1, 2),
                    rerank=2, rerank_factor=2.0)
# Sized on this 2-core machine by the quick profile (see the note in the cpu profile).
PROFILES = {
    "quick": Profile("quick", "cifar_resnet20", 16, 12000, baseline_epochs=20,
                     trial_steps=20, search_steps=600, final_steps=300,
                     trial_eval_images=1000, seeds=(0,), targets=(2,)),
    "cpu": Profile("cpu", "cifar_resnet20", 16, 12000, baseline_epochs=20,
                   trial_steps=20, search_steps=600, final_steps=300,
                   trial_eval_images=1000, seeds=(0, 1, 2), targets=(0, 1, 2)),
    # The cpu profile with a third of the compute for the search and two thirds for the
    # final fine-tune (the cpu profile's diagnostic: its plans lost to uniform L1 at 25%
    # FLOPs by their shorter final fine-tune, not by the plan); 2 plans re-ranked at 2x.
    "cpu-lean": _CPU_LEAN,
    # cpu-lean's budgets on the gpu profile's deeper network (ResNet-56: 27 residual blocks
    # where ResNet-20 has 9, so plans can differ more): the gpu profile's question asked on
    # this machine, at 16x16 on 12k images (a step costs about 3.5x cpu-lean's).
    "cpu-56": replace(_CPU_LEAN, name="cpu-56", arch="cifar_resnet56"),
    # Untested here (no GPU): sized by estimate for one H200, 4 processes side by side.
    "gpu": Profile("gpu", "cifar_resnet56", 28, None, baseline_epochs=15,
                   trial_steps=30, search_steps=900, final_steps=450,
                   trial_eval_images=2000, seeds=(0, 1, 2), targets=(0, 1, 2),
                   device="cuda", batch_size=256, jobs=4, deadline_minutes=6.5),
}
_SETUPS: dict[int, Setup] = {}  # by the run's seed: the baseline its rows prune


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def _threads(profile: Profile) -> int:
    return 1 if profile.device == "cpu" else 2


def _start_worker(profile: Profile, cache: str) -> None:
    torch.set_num_threads(_threads(profile))
    import optuna  # GP's fallback to independent sampling in the conditional space warns
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # on every trial
    baselines = {seed: prepare(profile, Path(cache), log, seed)
                 for seed in profile.baseline_seeds()}
    _SETUPS.update({seed: baselines[profile.baseline_seed(seed)] for seed in profile.seeds})


def _run_unit(unit: tuple[str, int, tuple[int, ...]]) -> list[dict[str, Any]]:
    row, target, seeds = unit
    setup = _SETUPS[seeds[0]]  # one-shot units of several seeds share one baseline
    label = f"{row} / {TARGETS[target][0]} / seed {','.join(map(str, seeds))}"
    log(f"start {label} (pid {os.getpid()})")
    try:
        if row in ONE_SHOTS:
            return run_one_shot(setup, row, target, seeds, log)
        scratch = "/dev/shm" if Path("/dev/shm").is_dir() else None
        with tempfile.TemporaryDirectory(dir=scratch) as folder:
            return [run_search(setup, row, target, seeds[0], Path(folder), log)]
    except Exception as error:  # noqa: BLE001 - one broken unit is reported, not fatal
        log(f"FAILED {label}: {type(error).__name__}: {error}")
        return [{"row": row, "target": target, "seed": seed, "test": None, "trial_steps": 0,
                 "rerank_steps": 0, "final_steps": 0, "seconds": 0.0,
                 "error": f"{type(error).__name__}: {error}"} for seed in seeds]


def _units(profile: Profile, rows: list[str], targets: list[int],
           done: set[tuple[str, int, int]]) -> list[tuple[str, int, tuple[int, ...]]]:
    """One-shot rows first (one unit runs all their seeds: one plan, several
    fine-tunes; a unit per seed when each seed has its own baseline), then the searches,
    one unit per seed, seed by seed (a run cut short has every row for its first seeds)."""
    units: list[tuple[str, int, tuple[int, ...]]] = []
    for row in (r for r in rows if r in ONE_SHOTS):
        for target in targets:
            seeds = tuple(s for s in profile.seeds if (row, target, s) not in done)
            if profile.baseline_per_seed:
                units += [(row, target, (seed,)) for seed in seeds]
            else:
                units += [(row, target, seeds)] if seeds else []
    for seed in profile.seeds:
        for target in targets:
            units += [(row, target, (seed,)) for row in rows
                      if row not in ONE_SHOTS and (row, target, seed) not in done]
    return units


def _describe(outcome: dict[str, Any]) -> str:
    test = "no model" if outcome["test"] is None else f"test {outcome['test']:.2%}"
    steps = outcome["trial_steps"] + outcome["rerank_steps"] + outcome["final_steps"]
    trials = outcome.get("trials")
    tried = "" if not trials else (
        f", {sum(t['fidelity'] != 'long' for t in trials)} trials "
        f"({sum(t['fidelity'] == 'short' for t in trials)} fine-tuned), chosen "
        f"#{outcome.get('chosen')} val {outcome.get('chosen_val') or 0:.3f}")
    return (f"{outcome['row']} / {TARGETS[outcome['target']][0]} / seed {outcome['seed']}: "
            f"{test}, steps {outcome['trial_steps']} + {outcome['rerank_steps']} + "
            f"{outcome['final_steps']} = {steps}{tried}, {outcome['seconds']:.0f} s")


def _mean_baseline(baselines: list[dict[str, Any]]) -> dict[str, Any]:
    """The baselines' numbers averaged (one baseline: itself). A row's mean drop from it is
    the mean of each seed's drop from its own baseline."""
    return {name: (statistics.fmean(b[name] for b in baselines)
                   if isinstance(value, float) else value)
            for name, value in baselines[0].items()}


def _write(path: Path, state: dict[str, Any]) -> None:
    path.write_text(json.dumps(state, indent=1, default=str))


def _finish(state: dict[str, Any], rows: list[str], profile: Profile, json_path: Path) -> None:
    baseline = state["baseline"]
    targets = [(i, TARGETS[i][0]) for i in profile.targets]
    header = (f"## search_quality, profile {profile.name}: {profile.arch} on Fashion-MNIST "
              f"{profile.image_size}x{profile.image_size}, "
              f"{state['train_images']} training images, seeds "
              f"{', '.join(map(str, profile.seeds))}\n\n"
              f"Unpruned baseline{_per_seed(state)}: test {baseline['test_accuracy']:.2%} "
              f"(official 10k), val "
              f"{baseline['accuracy']:.2%} ({profile.trial_eval_images} images), "
              f"{baseline['flops']:.3g} MACs, {baseline['latency_ms']:.3f} ms. Budget per row: "
              f"{profile.search_steps} search steps (trials' {profile.trial_steps}-step short "
              f"fine-tunes + re-rank) + {profile.final_steps} final steps; one-shot rows "
              f"fine-tune {profile.search_steps + profile.final_steps} steps; batch "
              f"{profile.batch_size}. {len(state['results'])} outcomes"
              f"{'' if state.get('complete') else ' (INCOMPLETE run)'}.")
    text, found = report(state["results"], [r for r in ROWS if r in rows], targets, baseline,
                         header)
    state["verdicts"] = {label: value["lines"] for label, value in found.items()}
    state["summary"] = {label: value["summary"] for label, value in found.items()}
    _write(json_path, state)
    json_path.with_suffix(".md").write_text(text + "\n")
    print("\n" + text, flush=True)


def _per_seed(state: dict[str, Any]) -> str:
    """How each seed's baseline tested, when there are several."""
    baselines = state.get("baselines") or {}
    if len(baselines) < 2:
        return ""
    tests = ", ".join(f"seed {seed} {b['test_accuracy']:.2%}" for seed, b in baselines.items())
    return f"s, one per seed ({tests}), averaged"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--quick", action="store_true", help="the same as --profile quick")
    parser.add_argument("--rows", default=None,
                        help="comma-separated row letters (a,a-attn,a-pls,b,c,d,e,f)")
    parser.add_argument("--targets", default=None, help="0: flops 50%%, 1: flops 25%%, "
                                                         "2: latency 50%%")
    parser.add_argument("--jobs", type=int, default=None, help="processes side by side")
    parser.add_argument("--resume", action="store_true",
                        help="keep the outcomes of an earlier run's JSON, run the rest")
    parser.add_argument("--fresh-final", action="store_true",
                        help="search rows' final fine-tunes start from the pruned weights, not "
                             "from the re-rank's (an ablation; its own JSON and table)")
    parser.add_argument("--no-screen", action="store_true",
                        help="search rows fine-tune every feasible plan, no probe screen "
                             "(search.fidelity.screen none; its own JSON and table)")
    parser.add_argument("--baseline-per-seed", action="store_true",
                        help="each seed's rows prune a baseline trained with that seed, not "
                             "all the seed-0 baseline (its own JSON and table)")
    parser.add_argument("--deadline-minutes", type=float, default=None,
                        help="start no unit after this many minutes (the gpu profile: 6.5)")
    parser.add_argument("--report-only", action="store_true",
                        help="print the tables of the JSON as it stands")
    args = parser.parse_args()
    profile = PROFILES["quick" if args.quick else args.profile]
    if args.targets:
        profile = replace(profile, targets=tuple(int(t) for t in args.targets.split(",")))
    if args.jobs:
        profile = replace(profile, jobs=args.jobs)
    if args.deadline_minutes is not None:
        profile = replace(profile, deadline_minutes=args.deadline_minutes)
    if args.fresh_final:
        profile = replace(profile, name=f"{profile.name}-fresh-final", continue_rerank=False)
    if args.no_screen:
        profile = replace(profile, name=f"{profile.name}-no-screen", screen="none")
    if args.baseline_per_seed:
        profile = replace(profile, name=f"{profile.name}-baselines", baseline_per_seed=True)
    rows = [r for r in ROWS if args.rows is None
            or r.split(")")[0][1:] in args.rows.split(",")]
    OUT.mkdir(parents=True, exist_ok=True)
    json_path = OUT / f"search_quality_{profile.name}.json"
    state: dict[str, Any] = {"profile": asdict(profile), "rows": rows, "results": []}
    if (args.resume or args.report_only) and json_path.exists():
        state["results"] = [r for r in json.loads(json_path.read_text())["results"]
                            if args.report_only or "error" not in r]
    if args.report_only:
        earlier = json.loads(json_path.read_text())
        _finish({**earlier, "results": state["results"]}, rows, profile, json_path)
        return
    started = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)
    cache = OUT / "cache"  # baselines keyed by what trains them: profiles may share one
    baselines = {}
    for seed in profile.baseline_seeds():
        setup = prepare(profile, cache, log, seed)
        baselines[seed] = {k: v for k, v in setup.baseline.items() if not isinstance(v, dict)}
        state["train_images"] = len(setup.splits.train)  # type: ignore[arg-type]
        log(f"baseline {profile.arch} (seed {seed}): test "
            f"{setup.baseline['test_accuracy']:.2%}, val {setup.baseline['accuracy']:.2%}, "
            f"{setup.baseline['flops']:.3g} MACs, {setup.baseline['latency_ms']:.3f} ms; scores "
            + ", ".join(f"{m} {s.seconds:.0f} s" for m, s in setup.scores.items())
            + f"; ready in {time.perf_counter() - started:.0f} s")
        del setup
    state["baselines"] = baselines
    state["baseline"] = _mean_baseline(list(baselines.values()))
    done = {(r["row"], r["target"], r["seed"]) for r in state["results"]}
    units = _units(profile, rows, list(profile.targets), done)
    deadline = (None if profile.deadline_minutes is None
                else started + 60 * profile.deadline_minutes)
    log(f"{len(units)} units on {profile.jobs} processes")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(profile.jobs, mp_context=context, initializer=_start_worker,
                             initargs=(profile, str(cache))) as pool:
        pending: set[Future] = set()
        queue, finished = list(units), 0
        while queue or pending:
            while queue and len(pending) < profile.jobs and (
                    deadline is None or time.perf_counter() < deadline):
                pending.add(pool.submit(_run_unit, queue.pop(0)))
            if not pending:
                log(f"deadline reached: {len(queue)} units not run")
                break
            complete, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in complete:
                finished += 1
                outcomes = future.result()
                state["results"] += outcomes
                _write(json_path, state)
                elapsed = time.perf_counter() - started
                for outcome in outcomes:
                    log(f"done {finished}/{len(units)} " + _describe(outcome))
                log(f"elapsed {elapsed / 60:.1f} min, about "
                    f"{elapsed / finished * (len(units) - finished) / 60:.0f} min left")
    state["complete"] = not queue
    state["minutes"] = (time.perf_counter() - started) / 60
    _finish(state, rows, profile, json_path)
    log(f"total {state['minutes']:.1f} min")


if __name__ == "__main__":
    main()
