"""What sizing a job's warm-start plans costs its preparation, counting plans from their
widths (``models.plan_count``) against pruning and counting a copy at every check.

    python bench/seeding_speed.py [--rounds 3] [--archs cifar_resnet20,cifar_resnet56]

For each architecture, ``search.seeding.seed_plans`` sizes the plans of two warm-start
scorers (attention and PLS shapes, with seeded random importance ranks: the cost of a
check does not depend on them) under a FLOPs limit of 50% and of 25% (``constrained``
mode), and at the FLOPs budgets of the ``weighted`` and ``pareto`` modes (no limit), once
as jobs do now (``PlanFit`` / ``FlopsCounter`` counting from widths, the plans settled on
confirmed on their pruned networks) and once with every check pruning a copy
(``counted=False``), alternating round by round in one process so that both see the same
machine. Printed: per architecture and target, the median seconds of each, their ratio,
and whether the two gave the same plans (they should: counted plans are confirmed).
Freshly initialised networks, one CPU thread. Writes ``bench/out/seeding_speed.md``.
Never part of the test suite.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

import search.seeding as seeding
from models import build_model, prunable_groups
from models.importance import ImportanceScores
from models.plan import removable_blocks
from search.fitting import PlanFit
from search.warm_start import FlopsCounter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._tables import table_report  # noqa: E402

#: (architecture, input shape): the search benchmark's networks and inputs.
SHAPES = {"cifar_resnet20": (3, 16, 16), "cifar_resnet56": (1, 16, 16),
          "resnet18": (3, 32, 32)}
ROUND_TO = 8


def _scores(method: str, groups: list[Any], blocks: list[Any], seed: int) -> ImportanceScores:
    rng = random.Random(f"{method}-{seed}")
    return ImportanceScores(
        method, {g.name: torch.rand(g.channels) for g in groups},
        {g.name: rng.random() for g in groups}, {b.name: rng.random() for b in blocks}, 0.0)


def _pruning_every_check() -> Callable[[], None]:
    """Make seeding prune a copy at every check; returns what undoes it."""
    saved = seeding.PlanFit, seeding.FlopsCounter
    seeding.PlanFit = lambda *a, counted=False, **k: PlanFit(*a, counted=False, **k)  # type: ignore[misc]
    seeding.FlopsCounter = (  # type: ignore[misc]
        lambda *a, counted=False, **k: FlopsCounter(*a, counted=False, **k))

    def undo() -> None:
        seeding.PlanFit, seeding.FlopsCounter = saved  # type: ignore[misc]
    return undo


def measure(arch: str, rounds: int, seed: int) -> Iterator[str]:
    shape = SHAPES[arch]
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=10, **({"in_channels": 1} if shape[0] == 1 else {}),
                        **({"small_input": True} if arch == "resnet18" else {})).eval()
    x = torch.zeros(1, *shape)
    groups = prunable_groups(model, x, round_to=ROUND_TO)
    blocks = removable_blocks(model, x)
    scores = {method: _scores(method, groups, blocks, seed) for method in ("attention", "pls")}
    for target in (0.5, 0.25, None):
        seconds: dict[bool, list[float]] = {True: [], False: []}
        plans: dict[bool, list[tuple[str, str]]] = {}
        for number in range(rounds):
            for counted in ((True, False) if number % 2 == 0 else (False, True)):
                undo = None if counted else _pruning_every_check()
                try:
                    started = time.perf_counter()
                    made = seeding.seed_plans(model, x, groups, blocks, scores, target,
                                              round_to=ROUND_TO)
                    seconds[counted].append(time.perf_counter() - started)
                finally:
                    if undo is not None:
                        undo()
                plans[counted] = [(label, plan.fingerprint()) for label, plan in made]
        fast, slow = (statistics.median(seconds[c]) for c in (True, False))
        what = "no limit (weighted, pareto)" if target is None else f"FLOPs {target:.0%}"
        yield (f"| {arch} {'x'.join(map(str, shape))} | {what} | {len(plans[True])} | "
               f"{slow:.2f} | {fast:.2f} | {fast / slow:.2f} | "
               f"{'yes' if plans[True] == plans[False] else 'NO'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--archs", default="cifar_resnet20,cifar_resnet56")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    header = ["| network | target | plans | s/seeding, pruning a copy per check (median) | "
              "s/seeding, counting from widths (median) | ratio | same plans |",
              "|---|---|---|---|---|---|---|"]
    table_report("seeding_speed",
                 "bench/seeding_speed.py: sizing the warm-start plans of a job's preparation",
                 header,
                 (row for arch in args.archs.split(",")
                  for row in measure(arch, args.rounds, args.seed)))


if __name__ == "__main__":
    main()
