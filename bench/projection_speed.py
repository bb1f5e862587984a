"""What projecting a sampled plan onto a FLOPs limit costs a trial, counting plans from their
widths (``models.plan_count``) against pruning and counting a copy at every check.

    python bench/projection_speed.py [--plans 12] [--archs cifar_resnet56,resnet50]

For each architecture, random plans drawn as a sampler proposes them (keep counts on the
search space's grid, about a third of the removable blocks dropped) are projected onto
25% and 50% of the unpruned network's MACs in ``constrained`` mode (scaled, widened and
filled, ``search.projection``), once by a projection whose checks count from the widths
(the default) and once by one whose checks prune a copy and count it with ptflops
(``counted=False``), alternating plan by plan in one process so that both see the same
machine. Printed: per architecture and limit, the median seconds per projection of each,
the ratio of the medians, and in how many plans the two projections gave the same plan
(they should in all: the counted plan is confirmed on its pruned network). Networks are
freshly initialised (the cost of a check does not depend on the weights); one CPU thread,
as a worker's trial runs on a GPU or a few cores. Writes
``bench/out/projection_speed.md``. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from core.spec import JobSpec
from models import build_model, prunable_groups
from models.measure import count_flops_params
from models.plan import removable_blocks
from search.constraints import Limit
from search.projection import PlanProjection
from search.space import SearchSpace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._tables import table_report  # noqa: E402

#: (architecture, input shape): cpu-56's network and input, and a bottleneck ResNet.
SHAPES = {"cifar_resnet56": (1, 16, 16), "cifar_resnet20": (3, 16, 16),
          "resnet50": (3, 64, 64), "mobilenet_v2": (3, 64, 64)}
ROUND_TO = 8


def measure(arch: str, plans: int, seed: int) -> Iterator[str]:
    shape = SHAPES[arch]
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=10, **({"in_channels": 1} if shape[0] == 1 else {}))
    x = torch.zeros(1, *shape)
    groups = prunable_groups(model, x, round_to=ROUND_TO)
    blocks = removable_blocks(model, x)
    spec = JobSpec.model_validate({"name": "projection-speed", "model": {"arch": arch},
                                   "dataset": {"name": "digits"},
                                   "objective": {"constraints": {"max_flops_ratio": 0.5}}})
    space = SearchSpace.from_spec(groups, blocks, spec.search, round_to=ROUND_TO)
    flops, _ = count_flops_params(model, shape)
    rng = random.Random(seed)
    sampled = [space.to_plan({g.name: rng.choice(range(g.low, g.channels + 1, g.step))
                              for g in space.groups},
                             [b for b in space.blocks if rng.random() < 0.33])
               for _ in range(plans)]
    for share in (0.25, 0.5):
        limits = [Limit("max_flops_ratio", "flops", share * flops)]
        made = {counted: PlanProjection(model, x, limits, space, accuracy_only=True,
                                        counted=counted) for counted in (True, False)}
        seconds: dict[bool, list[float]] = {True: [], False: []}
        same = 0
        for number, plan in enumerate(sampled):
            results = {}
            for counted in ((True, False) if number % 2 == 0 else (False, True)):
                started = time.perf_counter()
                results[counted] = made[counted](plan)
                seconds[counted].append(time.perf_counter() - started)
            same += results[True].fingerprint() == results[False].fingerprint()
        fast, slow = (statistics.median(seconds[c]) for c in (True, False))
        yield (f"| {arch} {'x'.join(map(str, shape))} | {share:.0%} | {len(sampled)} | "
               f"{slow:.3f} | {fast:.4f} | {fast / slow:.3f} | {same}/{len(sampled)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", type=int, default=12)
    parser.add_argument("--archs", default="cifar_resnet56,resnet50")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    header = ["| network | FLOPs limit | plans | s/projection, pruning a copy per check "
              "(median) | s/projection, counting from widths (median) | ratio | same plan |",
              "|---|---|---|---|---|---|---|"]
    table_report("projection_speed",
                 "bench/projection_speed.py: projecting sampled plans onto a FLOPs limit", header,
                 (row for arch in args.archs.split(",")
                  for row in measure(arch, args.plans, args.seed)))


if __name__ == "__main__":
    main()
