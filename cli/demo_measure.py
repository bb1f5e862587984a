"""The demo's last step: reload the downloaded checkpoint and measure it beside the original.

Imports torch (the demo imports this module only after its job succeeded).
Costs (latency, memory, FLOPs, parameters) of the unpruned architecture and of
the pruned network are measured here, on this machine's CPU, side by side:
their latency passes alternate (``models.measure.compare_latency``) so that
both see the same load.
Accuracy is on the held-out test split: the pruned network is evaluated here,
the unpruned one's accuracy is the worker's (its trained weights stay on the
server; only the pruned checkpoint is downloadable).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.text import Text

from cli.view import metrics_table

#: Timed passes per network, alternating between the two.
LATENCY_PASSES = 90


@dataclass
class Comparison:
    """Before / after metrics (keys as in ``cli.view.METRIC_ROWS``) and context."""

    before: dict[str, Any]
    after: dict[str, Any]
    worker_latency_ratio: float | None
    max_latency_ratio: float | None
    threads: int


def remeasure(checkpoint: Path, job: dict[str, Any], latency_runs: int = LATENCY_PASSES,
              threads: int | None = None) -> Comparison:
    """Load the pruned checkpoint, evaluate it on the test split, measure both networks.

    Args:
        checkpoint: the downloaded safetensors file.
        job: the succeeded job (its spec, baseline and best metrics).
        latency_runs: timed passes of each network.
        threads: torch threads for the measurements (None: torch's default).

    Returns:
        The comparison for ``before_after_table``.

    Raises:
        CheckpointError: the file is not a loadable pruned checkpoint.
    """
    import torch

    from models.architectures import build_model
    from models.datasets import load_dataset
    from models.export import load_pruned
    from models.measure import compare_latency, measure_model
    from models.train import evaluate

    if threads is not None:
        torch.set_num_threads(threads)
    pruned = load_pruned(checkpoint)
    metadata: dict[str, Any] = getattr(pruned, "topiary_metadata")  # noqa: B009 (set by load_pruned)
    unpruned = build_model(metadata["arch"], **metadata["arch_arguments"]).eval()
    input_shape = tuple(int(side) for side in metadata["input_shape"])
    spec = job["spec"]
    splits = load_dataset(spec["dataset"]["name"], spec["dataset"].get("image_size"),
                          seed=spec.get("seed", 0))
    networks = {"before": unpruned, "after": pruned}
    metrics = {name: measure_model(model, input_shape, "cpu", warmup=0, runs=1).to_dict()
               for name, model in networks.items()}
    latencies = compare_latency(unpruned, pruned, input_shape, "cpu", runs=latency_runs)
    for name, latency in zip(networks, latencies, strict=True):
        metrics[name]["latency_ms"] = latency.median_ms
        metrics[name]["latency_p90_ms"] = latency.p90_ms
        metrics[name]["flops"] = metrics[name]["macs"]
    best = job.get("best") or {}
    metrics["before"]["test_accuracy"] = best.get("baseline_test_accuracy")
    metrics["after"]["test_accuracy"] = evaluate(pruned, splits, split="test")
    constraints = spec.get("objective", {}).get("constraints", {})
    return Comparison(before=metrics["before"], after=metrics["after"],
                      worker_latency_ratio=best.get("latency_ratio"),
                      max_latency_ratio=constraints.get("max_latency_ratio"),
                      threads=torch.get_num_threads())


def before_after_table(comparison: Comparison) -> Group:
    """The demo's closing table and how its numbers were obtained."""
    table = metrics_table(comparison.before, comparison.after, before_label="unpruned",
                          after_label="pruned")
    notes = [Text(f"accuracy: held-out test split; costs: measured here side by side on CPU, "
                  f"batch 1, {comparison.threads} thread(s), latency = median of "
                  f"{LATENCY_PASSES} passes each, alternating between the two networks",
                  style="dim")]
    worker, limit = comparison.worker_latency_ratio, comparison.max_latency_ratio
    if worker is not None and limit is not None:
        note = (f"the worker measured a latency ratio of {worker:.2f} after the final fine-tune "
                f"(constraint {limit:g}, checked on each trial during the search; every "
                "ratio timed side by side with the unpruned network)")
        if worker > limit:
            note += ("; above the limit now: latency on a busy machine is noisy, rerun the "
                     "demo when the machine is idle")
        notes.append(Text(note, style="dim"))
    return Group(Text("ResNet-20 on digits 16x16: before and after pruning", style="bold"),
                 table, *notes)
