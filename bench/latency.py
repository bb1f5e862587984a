"""What pruning buys in each runtime: MACs ratio beside measured latency ratios.

For each network, uniform keep ratios, and batch size, the pruned network is timed
side by side with the unpruned one (passes alternate, medians) in PyTorch eager,
ONNX Runtime and OpenVINO, all on the CPU with the same thread count. A plan that
meets a limit in one runtime can miss it in another: this table shows by how much.

    .venv/bin/python bench/latency.py                      # the default table
    .venv/bin/python bench/latency.py --archs cifar_resnet56 --keeps 0.5 --runs 10

Prints one row per (network, keep, batch); nothing is asserted.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.catalog import ARCHITECTURES  # noqa: E402
from models import PrunePlan, apply_plan, build_model, prunable_groups  # noqa: E402
from models.measure import count_flops_params  # noqa: E402
from models.runtimes import available_runtimes, compare_in_runtime  # noqa: E402

SIZES = {"cifar_resnet56": 32, "resnet18": 112, "mobilenet_v2": 112}


def _network(arch: str) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    arguments = {"num_classes": 10}
    if ARCHITECTURES[arch].family == "torchvision":
        arguments["small_input"] = False
    torch.manual_seed(0)
    model = build_model(arch, **arguments).eval()
    size = SIZES.get(arch, ARCHITECTURES[arch].default_input_size)
    return model, (3, size, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(SIZES))
    parser.add_argument("--keeps", nargs="+", type=float, default=[0.75, 0.5, 0.25])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--runs", type=int, default=20, help="timed passes of each network")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runtimes", nargs="+", default=available_runtimes())
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    print(f"# CPU, {options.threads} thread(s), {options.runs} alternating passes each, "
          f"{os.cpu_count()} cores; ratio = pruned median / unpruned median")
    header = ["network", "input", "keep", "batch", "MACs ratio",
              *[f"{runtime} ratio" for runtime in options.runtimes],
              *[f"{runtime} base ms" for runtime in options.runtimes]]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    began = time.time()
    for arch in options.archs:
        model, shape = _network(arch)
        example = torch.randn(1, *shape)
        groups = prunable_groups(model, example)
        macs, _ = count_flops_params(model, shape)
        for keep in options.keeps:
            pruned = apply_plan(copy.deepcopy(model), PrunePlan.uniform(groups, keep), example)
            pruned_macs, _ = count_flops_params(pruned, shape)
            for batch in options.batches:
                ratios, bases = [], []
                for runtime in options.runtimes:
                    reference, candidate = compare_in_runtime(
                        model, pruned, shape, runtime, "cpu", batch_size=batch, warmup=3,
                        runs=options.runs, threads=options.threads)
                    ratios.append(f"{candidate.median_ms / reference.median_ms:.2f}")
                    bases.append(f"{reference.median_ms:.1f}")
                row = [arch, "x".join(map(str, shape[1:])), f"{keep:.2f}", str(batch),
                       f"{pruned_macs / macs:.2f}", *ratios, *bases]
                print("| " + " | ".join(row) + " |", flush=True)
    print(f"# {time.time() - began:.0f} s")


if __name__ == "__main__":
    main()
