"""Which residual blocks should a full-width plan keep under a latency limit?

    python bench/block_choice.py [--drop K,...] [--seeds S]

The search benchmark's setting (``bench/search_quality.py``: cifar_resnet20 on
16x16 digits, CPU latency, 2 fine-tune epochs): for every way of dropping K of
the removable blocks with every layer at full width, prints the latency ratio
(timed side by side with the baseline, as trials are) and the validation
accuracy after the trials' fine-tune, averaged over ``--seeds`` fine-tune seeds
(each row's spread shows the evaluation noise a search sees). Rows that a
warm-start scorer's plan would drop (its K least important blocks) are marked.
It tells whether the scorers pick the right blocks, and what one block fewer
dropped is worth.

The ``bn_loss`` column is the training-free probe jobs use under a measured
limit (``models.probe``, EagleEye's adaptive BatchNorm): the calibration
split's cross-entropy after the pruned network's BatchNorm statistics are
re-estimated on that split. Rows marked ``probe`` are what a greedy elimination
by that loss keeps. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from models.measure import latency_against
from models.plan import PrunePlan, apply_plan
from models.probe import adaptive_bn_loss, block_elimination_order

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.search_quality import make_spec, prepare, tune_and_score  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drop", default="6,5", help="blocks dropped, comma-separated")
    parser.add_argument("--seeds", type=int, default=3, help="fine-tune seeds per plan")
    parser.add_argument("--baseline-epochs", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    spec = make_spec({"max_latency_ratio": 0.5}, "tpe", 20, 2, 0)
    with tempfile.TemporaryDirectory() as folder:
        setup = prepare(spec, args.baseline_epochs, Path(folder))
    names = [block.name for block in setup.blocks]
    ranked = {method: sorted(names, key=scores.block.__getitem__)
              for method, scores in setup.scores.items()}
    example = setup.splits.example_input()
    ranked["probe"] = block_elimination_order(setup.model, example, setup.splits, names)
    print(f"cifar_resnet20, digits 16x16, CPU; removable blocks {', '.join(names)}; "
          f"val accuracy over {args.seeds} fine-tune seeds of {spec.fine_tune.trial_epochs} "
          f"epochs")
    for method, order in ranked.items():
        print(f"  {method} ranks them (least important first): {', '.join(order)}")
    for count in (int(value) for value in args.drop.split(",")):
        rows = []
        for kept in itertools.combinations(names, len(names) - count):
            dropped = [name for name in names if name not in kept]
            model = apply_plan(copy.deepcopy(setup.model), PrunePlan(drop_blocks=dropped),
                               example)
            ratio = latency_against(setup.model, model, setup.splits.input_shape, "cpu",
                                    setup.baseline["latency_ms"])["latency_ratio"]
            values = [tune_and_score(copy.deepcopy(model), setup, spec, seed)[0]
                      for seed in range(args.seeds)]
            chosen = [method for method, order in ranked.items()
                      if set(order[:count]) == set(dropped)]
            rows.append((statistics.mean(values), max(values) - min(values), ratio, kept, chosen,
                         adaptive_bn_loss(model, setup.splits)))
        rows.sort(key=lambda row: -row[0])
        print(f"\n{count} dropped, full width: kept blocks, latency ratio, mean val %, "
              f"spread (max - min) over seeds, bn_loss")
        for mean, spread, ratio, kept, chosen, loss in rows:
            mark = f"  <- {', '.join(chosen)}" if chosen else ""
            print(f"  {' + '.join(kept):24s} {ratio:5.2f}  {mean * 100:5.1f}  "
                  f"{spread * 100:4.1f}  {loss:5.3f}{mark}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
