"""Benchmark the pruning engine: apply time, MACs, params and latency of uniform plans.

    python bench/engine.py [--quick] [--threads N] [--device cpu|cuda]

For cifar_resnet56 and resnet18 (small-input stem) at 32x32 and uniform keep
ratios 0.75 / 0.5 / 0.25, prints the time ``apply_plan`` takes, the MACs and
parameter ratios (pruned / unpruned) and the measured latency ratios at
batch 1 and 64 (and 256 on CUDA, where small batches are bound by kernel
launches, not by arithmetic; CUDA passes are timed with CUDA events). The
unpruned and pruned models are timed side by side in the same run: round-robin
rounds, each model timed once per round, the reported latency is the median of
the per-round medians. Ratios below 1 mean smaller or faster. Never part of the
test suite.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from models.architectures import build_model
from models.measure import count_flops_params, measure_latency, resolve_device
from models.plan import PrunePlan, apply_plan, prunable_groups

ARCHITECTURES: list[tuple[str, dict]] = [
    ("cifar_resnet56", {"num_classes": 10}),
    ("resnet18", {"num_classes": 10, "small_input": True}),
]
KEEP_RATIOS = (0.75, 0.5, 0.25)
INPUT_SHAPE = (3, 32, 32)


@dataclass
class Settings:
    rounds: int
    runs: int
    warmup: int


FULL = {1: Settings(rounds=5, runs=10, warmup=3), 64: Settings(rounds=3, runs=3, warmup=1)}
QUICK = {1: Settings(rounds=3, runs=5, warmup=2), 64: Settings(rounds=2, runs=2, warmup=1)}
CUDA = {batch: Settings(rounds=5, runs=30, warmup=10) for batch in (1, 64, 256)}


def _side_by_side_latency(models: list[nn.Module], batch_size: int, settings: Settings,
                          threads: int, device: str) -> list[float]:
    """Median over rounds of each model's median latency (ms); models alternate per round."""
    per_round: list[list[float]] = [[] for _ in models]
    for _ in range(settings.rounds):
        for index, model in enumerate(models):
            result = measure_latency(model, INPUT_SHAPE, device, batch_size=batch_size,
                                     warmup=settings.warmup, runs=settings.runs, threads=threads)
            per_round[index].append(result.median_ms)
    return [statistics.median(times) for times in per_round]


def _benchmark(arch: str, arguments: dict, settings: dict[int, Settings],
               threads: int, device: str) -> list[list[str]]:
    torch.manual_seed(0)
    example = torch.randn(1, *INPUT_SHAPE)
    base = build_model(arch, **arguments).eval()
    groups = prunable_groups(base, example)
    base_macs, base_params = count_flops_params(base, INPUT_SHAPE)

    pruned, apply_seconds, macs, params = [], [], [], []
    for ratio in KEEP_RATIOS:
        torch.manual_seed(0)
        model = build_model(arch, **arguments).eval()
        began = time.perf_counter()
        apply_plan(model, PrunePlan.uniform(groups, ratio), example)
        apply_seconds.append(time.perf_counter() - began)
        model_macs, model_params = count_flops_params(model, INPUT_SHAPE)
        pruned.append(model)
        macs.append(model_macs / base_macs)
        params.append(model_params / base_params)

    latency = {batch: _side_by_side_latency([base, *pruned], batch, settings[batch], threads,
                                            device)
               for batch in settings}
    rows = [[arch, "1.00", "-", f"{base_macs / 1e6:.1f}M", f"{base_params / 1e6:.3f}M",
             *[f"{latency[batch][0]:.2f}ms" for batch in settings]]]
    for index, ratio in enumerate(KEEP_RATIOS):
        rows.append([arch, f"{ratio:.2f}", f"{apply_seconds[index]:.2f}", f"{macs[index]:.3f}",
                     f"{params[index]:.3f}",
                     *[f"{latency[batch][index + 1] / latency[batch][0]:.3f}"
                       for batch in settings]])
    return rows


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print("  ".join(cell.rjust(width) for cell, width in zip(header, widths, strict=True)))
    print("  ".join("-" * width for width in widths))
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed runs")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    options = parser.parse_args()
    device = resolve_device(options.device)
    settings = CUDA if device.type == "cuda" else QUICK if options.quick else FULL
    began = time.perf_counter()
    rows = []
    for arch, arguments in ARCHITECTURES:
        rows += _benchmark(arch, arguments, settings, options.threads, str(device))
    header = ["arch", "keep", "apply_s", "macs_ratio", "params_ratio",
              *[f"lat_b{batch}_ratio" for batch in settings]]
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU, {options.threads} thread(s), {'quick' if options.quick else 'full'}")
    print(f"input {INPUT_SHAPE}, {where} settings "
          + ", ".join(f"b{b}: {s.rounds} rounds x {s.runs} runs" for b, s in settings.items()))
    print("keep 1.00 rows are the unpruned model: absolute MACs, params and median latencies;\n"
          "other rows are pruned / unpruned ratios, timed side by side in the same run.\n")
    _print_table(header, rows)
    print(f"\ntotal {time.perf_counter() - began:.0f}s")


if __name__ == "__main__":
    main()
