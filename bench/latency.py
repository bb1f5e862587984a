"""What pruning buys in each runtime: MACs ratio beside measured latency ratios.

For each network, uniform keep ratios, and batch size, the pruned network is timed
side by side with the unpruned one (passes alternate, medians) in PyTorch eager,
ONNX Runtime and OpenVINO, all on the CPU with the same thread count. A plan that
meets a limit in one runtime can miss it in another: this table shows by how much.

    .venv/bin/python bench/latency.py                      # the default table
    .venv/bin/python bench/latency.py --archs cifar_resnet56 --keeps 0.5 --runs 10

Prints one row per (network, keep, batch); nothing is asserted.

``--mode round-to``: which channel multiple runs fastest on the CPU. Each network is
pruned uniformly (``--keeps``, default 0.5 and 0.4) with its widths rounded to
multiples of 1, 4, 8 and 16, and timed side by side with the unpruned one at batch 1
in ONNX Runtime and OpenVINO; latency per MAC kept, relative to ``round_to`` 1,
says what the multiple buys. ``core.spec.CPU_ROUND_TO`` was chosen from this table.

``--mode threads``: how far one trial's timing can be trusted at each intra-op thread
count. A uniformly pruned network (``--keeps``, default 0.5) is timed side by side with
the unpruned one as a trial times it (``compare_in_runtime``, 5 warm-up and ``--runs``
passes, default 30), ``--repeats`` times (default 10) at each thread count from 1 to the
cores, in each runtime: the median ratio, the spread of the ratios (smallest to largest)
and the unpruned network's median time. A search sizes plans and keeps trials on single
timings, so a wide spread is a search misled by noise. ``SIZES`` plus cifar_resnet20 at
28x28 (Fashion-MNIST); run it on an otherwise idle machine.

``--mode jobs`` and ``--mode limits`` run real jobs (``bench/_latency_jobs.py``).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.catalog import ARCHITECTURES  # noqa: E402
from models import PrunePlan, apply_plan, build_model, prunable_groups  # noqa: E402
from models.measure import count_flops_params  # noqa: E402
from models.runtimes import (  # noqa: E402
    LoadedNetwork,
    SideBySide,
    available_runtimes,
    compare_in_runtime,
)

SIZES = {"cifar_resnet56": 32, "resnet18": 112, "mobilenet_v2": 112, "cifar_resnet20": 28}
DEFAULT_ARCHS = ["cifar_resnet56", "resnet18", "mobilenet_v2"]


def _network(arch: str) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    arguments = {"num_classes": 10}
    if ARCHITECTURES[arch].family == "torchvision":
        arguments["small_input"] = False
    torch.manual_seed(0)
    model = build_model(arch, **arguments).eval()
    size = SIZES.get(arch, ARCHITECTURES[arch].default_input_size)
    return model, (3, size, size)


def _print_header(header: list[str]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))


def _prunable(arch: str) -> tuple[torch.nn.Module, tuple[int, int, int], torch.Tensor, list]:
    """The network, its input shape, an example batch and its prunable groups."""
    model, shape = _network(arch)
    example = torch.randn(1, *shape)
    return model, shape, example, prunable_groups(model, example)


def _interleaved_ratios(side: SideBySide, reference: torch.nn.Module, networks: list,
                        runs: int, rounds: int) -> list[float]:
    """Each network's latency over the reference's: passes of all of them in turn (so load
    on the machine falls on all alike), each network's fastest pass of a round (on a
    shared CPU other processes only ever slow a pass down, and under heavy load they
    slow most of them), the median ratio over ``rounds`` rounds."""
    everyone = []
    for network in (reference, *networks):
        loaded = side.load(network)
        assert isinstance(loaded, LoadedNetwork)  # exported runtimes only
        everyone.append(loaded)
    for network in everyone:
        for _ in range(3):
            network.run()
    per_round: list[list[float]] = []
    for _ in range(rounds):
        times: list[list[float]] = [[] for _ in everyone]
        for _ in range(runs):
            for network, sink in zip(everyone, times, strict=True):
                began = time.perf_counter()
                network.run()
                sink.append(time.perf_counter() - began)
        fastest = [min(sink) for sink in times]
        per_round.append([value / fastest[0] for value in fastest[1:]])
    return [statistics.median(column) for column in zip(*per_round, strict=True)]


def round_to_table(options: argparse.Namespace) -> None:
    """Latency per MAC kept at each channel multiple, relative to ``round_to`` 1."""
    runtimes = [runtime for runtime in options.runtimes if runtime != "torch"]
    multiples = options.round_to
    print(f"# CPU, {options.threads} thread(s), batch 1, {options.rounds} rounds of "
          f"{options.runs} passes of every network in turn, {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}; MACs and latency ratios (fastest pass) to the unpruned "
          f"network, median over rounds; per MAC = latency ratio / "
          f"MACs ratio, relative to round_to {multiples[0]}")
    _print_header(["network", "runtime", "keep",
                   *[f"r{m} MACs / lat / per MAC" for m in multiples]])
    began = time.time()
    relative: dict[tuple[str, int], list[float]] = {}
    for arch in options.archs:
        model, shape = _network(arch)
        example = torch.randn(1, *shape)
        macs, _ = count_flops_params(model, shape)
        pruned = {}
        for keep in options.keeps:
            for multiple in multiples:
                groups = prunable_groups(model, example, round_to=multiple)
                network = apply_plan(copy.deepcopy(model),
                                     PrunePlan.uniform(groups, keep, round_to=multiple), example)
                pruned[keep, multiple] = (network, count_flops_params(network, shape)[0] / macs)
        for runtime in runtimes:
            side = SideBySide(model, shape, runtime, "cpu", threads=options.threads)
            for keep in options.keeps:
                networks = [pruned[keep, multiple][0] for multiple in multiples]
                ratios = _interleaved_ratios(side, model, networks, options.runs,
                                             options.rounds)
                cells, per_mac = [], []
                for multiple, ratio in zip(multiples, ratios, strict=True):
                    macs_ratio = pruned[keep, multiple][1]
                    per_mac.append(ratio / macs_ratio)
                    cells.append(f"{macs_ratio:.3f} / {ratio:.3f} / "
                                 f"{per_mac[-1] / per_mac[0]:.3f}")
                    relative.setdefault((runtime, multiple), []).append(
                        per_mac[-1] / per_mac[0])
                print("| " + " | ".join([arch, runtime, f"{keep:.2f}", *cells]) + " |",
                      flush=True)
    for runtime in runtimes:
        means = [statistics.median(relative[runtime, m]) for m in multiples]
        print(f"# {runtime}: median latency per MAC relative to round_to {multiples[0]}: "
              + ", ".join(f"round_to {m}: {mean:.3f}" for m, mean in zip(multiples, means,
                                                                         strict=True)))
    print(f"# {time.time() - began:.0f} s")


def threads_table(options: argparse.Namespace) -> None:
    """The spread of single side-by-side timings at each thread count (``--mode threads``)."""
    cores = len(os.sched_getaffinity(0))
    print(f"# CPU, {cores} cores, load {os.getloadavg()[0]:.1f}; {options.repeats} timings of "
          f"{options.runs} alternating passes each (as one trial's), ratio = pruned median / "
          "unpruned median")
    _print_header(["network", "keep", "runtime", "threads", "median ratio", "ratio spread",
                   "unpruned ms (min-max)"])
    began = time.time()
    for arch in options.archs:
        model, shape, example, groups = _prunable(arch)
        for keep in options.keeps:
            pruned = apply_plan(copy.deepcopy(model), PrunePlan.uniform(groups, keep), example)
            for runtime in options.runtimes:
                for threads in range(1, cores + 1):
                    torch.set_num_threads(threads)
                    ratios, bases = [], []
                    for _ in range(options.repeats):
                        reference, candidate = compare_in_runtime(
                            model, pruned, shape, runtime, "cpu", warmup=5, runs=options.runs,
                            threads=threads)
                        ratios.append(candidate.median_ms / reference.median_ms)
                        bases.append(reference.median_ms)
                    row = [arch, f"{keep:.2f}", runtime, str(threads),
                           f"{statistics.median(ratios):.2f}",
                           f"{min(ratios):.2f}-{max(ratios):.2f}",
                           f"{statistics.median(bases):.3f} ({min(bases):.3f}-{max(bases):.3f})"]
                    print("| " + " | ".join(row) + " |", flush=True)
    print(f"# {time.time() - began:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["table", "round-to", "threads", "jobs", "limits"],
                        default="table")
    parser.add_argument("--archs", nargs="+", default=None,
                        help="default: " + " ".join(DEFAULT_ARCHS)
                             + " (threads mode: cifar_resnet20 and cifar_resnet56)")
    parser.add_argument("--repeats", type=int, default=10,
                        help="threads mode: side-by-side timings at each thread count")
    parser.add_argument("--keeps", nargs="+", type=float, default=None,
                        help="default 0.75 0.5 0.25 (round-to: 0.5 0.4)")
    parser.add_argument("--round-to", nargs="+", type=int, default=[1, 4, 8, 16])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--runs", type=int, default=20, help="timed passes of each network")
    parser.add_argument("--rounds", type=int, default=5,
                        help="round-to mode: rounds of passes (the median ratio stands)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runtimes", nargs="+", default=available_runtimes())
    parser.add_argument("--jobs", type=int, default=10, help="limits mode: jobs to run")
    parser.add_argument("--trials", type=int, default=6, help="jobs modes: trials per job")
    parser.add_argument("--quick", action="store_true", help="jobs modes: a smoke run")
    parser.add_argument("--out", type=Path, default=None,
                        help="jobs modes: also write the rows as JSON here")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    if options.mode in ("jobs", "limits"):
        from bench._latency_jobs import run_mode

        run_mode(options)
        return
    if options.mode == "threads":
        options.archs = options.archs or ["cifar_resnet20", "cifar_resnet56"]
        options.keeps = options.keeps or [0.5]
        options.runs = 30 if options.runs == parser.get_default("runs") else options.runs
        threads_table(options)
        return
    options.archs = options.archs or DEFAULT_ARCHS
    if options.mode == "round-to":
        options.keeps = options.keeps or [0.5, 0.4]
        round_to_table(options)
        return
    options.keeps = options.keeps or [0.75, 0.5, 0.25]
    print(f"# CPU, {options.threads} thread(s), {options.runs} alternating passes each, "
          f"{os.cpu_count()} cores; ratio = pruned median / unpruned median")
    _print_header(["network", "input", "keep", "batch", "MACs ratio",
                   *[f"{runtime} ratio" for runtime in options.runtimes],
                   *[f"{runtime} base ms" for runtime in options.runtimes]])
    began = time.time()
    for arch in options.archs:
        model, shape, example, groups = _prunable(arch)
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
