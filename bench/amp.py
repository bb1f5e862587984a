"""Benchmark mixed precision on CUDA: fine-tune time and accuracy, float32 vs AMP.

    python bench/amp.py [--epochs N] [--rounds N] [--device cuda]

Trains a baseline on the built-in digits (images upscaled to 32x32 or
128x128, the splits on the GPU as the worker keeps them), prunes it to a
uniform keep ratio of 0.5 and fine-tunes that same pruned network from the same
weights once with AMP off and once with it on, alternating, for ``--rounds``
rounds. Reports per setting the median seconds per epoch and the
median final validation accuracy, and the AMP / float32 time ratio. The
settings are timed side by side in one run. Needs a CUDA GPU; never part of the
test suite.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import time
from typing import Any

import torch

from models.datasets import DataSplits, load_dataset
from models.measure import resolve_device
from models.plan import PrunePlan, apply_plan, prunable_groups
from models.train import (
    FINE_TUNE_LEARNING_RATE,
    TrainConfig,
    evaluate,
    fine_tune,
    train_baseline,
)

CASES = [("cifar_resnet56", {"num_classes": 10}, 32),
         ("resnet18", {"num_classes": 10, "small_input": True}, 32),
         ("resnet18", {"num_classes": 10, "small_input": True}, 128)]
BATCH_SIZES = (64, 256)
BASELINE = TrainConfig(epochs=10, learning_rate=0.05, amp=False)


def _pruned(arch: str, arguments: dict, splits: DataSplits, size: int,
            device: torch.device) -> torch.nn.Module:
    config = dataclasses.replace(BASELINE, device=str(device))
    model = train_baseline(arch, arguments, splits, config, eval_split=None).cpu().eval()
    example = torch.randn(1, 3, size, size)
    apply_plan(model, PrunePlan.uniform(prunable_groups(model, example), 0.5), example)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="fine-tune epochs per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each setting")
    parser.add_argument("--device", default="cuda")
    options = parser.parse_args()
    device = resolve_device(options.device)
    if device.type != "cuda":
        sys.exit("bench/amp.py needs a CUDA GPU: AMP is off on CPU")
    print(f"{torch.cuda.get_device_name(device)}, digits, baseline {BASELINE.epochs} epochs "
          f"(float32), pruned to keep 0.5, then {options.epochs} fine-tune epochs per run, "
          f"{options.rounds} rounds, float32 and AMP alternating\n")
    header = ["arch", "size", "batch", "fp32_s/epoch", "amp_s/epoch", "amp/fp32", "fp32_acc",
              "amp_acc"]
    rows = []
    for arch, arguments, size in CASES:
        splits = load_dataset("digits", image_size=size, seed=0).to_device(device)
        start = _pruned(arch, arguments, splits, size, device)
        for batch_size in BATCH_SIZES:
            # Linear scaling: at batch 256 an epoch of digits is only 4 steps.
            tuning: dict[str, Any] = {"device": str(device), "batch_size": batch_size,
                                      "learning_rate": FINE_TUNE_LEARNING_RATE * batch_size / 64}
            seconds: dict[bool, list[float]] = {False: [], True: []}
            accuracy: dict[bool, list[float]] = {False: [], True: []}
            for amp in (False, True):  # warm-up: cuDNN plans, the allocator
                fine_tune(copy.deepcopy(start), splits, 1, amp=amp, **tuning)
            for _ in range(options.rounds):
                for amp in (False, True):
                    model = copy.deepcopy(start)
                    torch.cuda.synchronize(device)
                    began = time.perf_counter()
                    fine_tune(model, splits, options.epochs, amp=amp, eval_split=None, **tuning)
                    torch.cuda.synchronize(device)
                    seconds[amp].append((time.perf_counter() - began) / options.epochs)
                    accuracy[amp].append(evaluate(model, splits, "val", device, use_amp=amp))
            fp32, mixed = statistics.median(seconds[False]), statistics.median(seconds[True])
            rows.append([arch, str(size), str(batch_size), f"{fp32:.3f}", f"{mixed:.3f}",
                         f"{mixed / fp32:.2f}", f"{statistics.median(accuracy[False]):.3f}",
                         f"{statistics.median(accuracy[True]):.3f}"])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * width for width in widths], *rows]:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
