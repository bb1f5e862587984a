"""The final timing: what may be delivered, timed side by side with the unpruned network
in the job's runtime, in rounds until the median ratio is stable.

A trial's latency is one timing; the model a user downloads is timed again here
(``stable_timing``): a plan's architecture before its long fine-tune (latency does
not depend on the weights), and the exported file afterwards (``FinalTimer``). A
timing that misses goes on for more rounds and is judged on all of them: unlike one
network's time, a ratio of two can come out too low on a busy machine as well as too
high (the longer passes are interrupted more often), so the faster of two timings is
no safer a verdict for the model a user is promised. For the same reason the verdict
takes the larger of the median ratio and the ratio of the fastest passes
(``FinalTiming.verdict_ratio``). A network whose architecture this timer timed before
(the re-rank times each candidate, delivery times the chosen one again, and in eager
PyTorch the delivered model once more) goes on from those rounds, judged on all of them:
one more short series of a plan near its limit is another coin to toss, not a truer
verdict.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from core.spec import JobSpec
from models.export import export_onnx
from models.latency import LatencyResult
from models.measure import measure_model
from models.plan import PrunePlan, apply_plan
from models.runtimes import SideBySide
from search.costs import LatencyTimer
from search.objective import latency_timer

__all__ = ["FINAL_RUNS", "MAX_ROUNDS", "MIN_ROUNDS", "STABLE_SPREAD", "Comparison",
           "FinalTimer", "FinalTiming", "TimedPlan", "stable_timing"]

#: Timed passes of each network per round of the final timing (at least; latency.runs if more).
FINAL_RUNS = 20
#: Rounds of the final timing: at least MIN_ROUNDS; it stops once the last MIN_ROUNDS round
#: ratios agree within STABLE_SPREAD of their median, or after MAX_ROUNDS.
MIN_ROUNDS = 3
MAX_ROUNDS = 10
STABLE_SPREAD = 0.02

Comparison = Callable[[int], tuple[LatencyResult, LatencyResult]]


@dataclass(frozen=True)
class FinalTiming:
    """A network timed side by side with the unpruned one until its ratio was stable.

    Attributes:
        ratio: median over rounds of (network's median / reference's median).
        raw_ms: median over rounds of the network's median, milliseconds.
        p90_ms: median over rounds of the network's 90th percentile.
        reference_ms: median over rounds of the reference's median.
        runs: timed passes of each network, all rounds together.
        rounds: rounds timed.
        timings: ``(reference's, network's)`` latency of every round.
        fastest_ratio: median over rounds of (network's fastest pass / reference's
            fastest pass); None when the timings give no fastest pass (an agent's).
    """

    ratio: float
    raw_ms: float
    p90_ms: float
    reference_ms: float
    runs: int
    rounds: int
    timings: tuple[tuple[LatencyResult, LatencyResult], ...] = ()
    fastest_ratio: float | None = None

    @property
    def verdict_ratio(self) -> float:
        """The ratio limits are judged by: the larger of the median ratio and the fastest
        passes' ratio. They agree on a quiet machine; on a loaded one, passes of the longer
        (unpruned) network are interrupted more often, which pulls the median ratio down
        while the fastest passes stay near the truth, and a model must not pass its limit
        because the machine was busy."""
        return max(self.ratio, self.fastest_ratio or self.ratio)

    def record(self, baseline_latency_ms: float) -> dict[str, float]:
        """The latency fields of a record, in the conditions the baseline was timed in
        (the verdict ratio scales the recorded baseline, as trials' ratios do)."""
        scale = baseline_latency_ms / self.reference_ms
        record = {"latency_ms": self.verdict_ratio * baseline_latency_ms,
                  "latency_p90_ms": self.p90_ms * scale, "latency_ratio": self.verdict_ratio,
                  "latency_median_ratio": self.ratio, "latency_raw_ms": self.raw_ms,
                  "latency_runs": float(self.runs)}
        if self.fastest_ratio is not None:
            record["latency_fastest_ratio"] = self.fastest_ratio
        return record


def stable_timing(compare: Comparison, runs: int, earlier: FinalTiming | None = None
                  ) -> FinalTiming:
    """Time rounds of ``runs`` side-by-side passes until the ratio is stable.

    Args:
        compare: times ``n`` passes of the reference and the network, alternating;
            returns ``(reference's, network's)`` latency.
        runs: passes per round.
        earlier: a timing to go on from: at least ``MIN_ROUNDS`` more rounds, and the
            result is over all rounds, its own included.
    """
    rounds = list(earlier.timings) if earlier is not None else []
    ratios = [network.median_ms / reference.median_ms for reference, network in rounds]
    started = len(rounds)
    while len(rounds) - started < MAX_ROUNDS:
        reference, network = compare(runs)
        rounds.append((reference, network))
        ratios.append(network.median_ms / reference.median_ms)
        if len(rounds) - started >= MIN_ROUNDS:
            recent = ratios[-MIN_ROUNDS:]
            if (max(recent) - min(recent)) <= STABLE_SPREAD * statistics.median(recent):
                break
    fastest = [network.fastest_ms / reference.fastest_ms for reference, network in rounds
               if network.fastest_ms is not None and reference.fastest_ms]
    return FinalTiming(
        ratio=statistics.median(ratios),
        raw_ms=statistics.median(network.median_ms for _, network in rounds),
        p90_ms=statistics.median(network.p90_ms for _, network in rounds),
        reference_ms=statistics.median(reference.median_ms for reference, _ in rounds),
        runs=sum(network.runs for _, network in rounds), rounds=len(rounds),
        timings=tuple(rounds),
        fastest_ratio=statistics.median(fastest) if len(fastest) == len(rounds) else None)


class TimedPlan(NamedTuple):
    """A plan's pruned network (``FinalTimer.plan``), its counted costs (one pass) and its
    record: those costs with the final timing's latency fields over them."""

    model: nn.Module
    costs: dict[str, Any]
    record: dict[str, Any]


class FinalTimer:
    """Times what may be delivered side by side with the unpruned network, in the job's
    runtime, until the ratio is stable (``stable_timing``): a plan's network before its
    long fine-tune, and the file a user downloads after it.

    Args:
        spec: the job spec (runtime, batch size, threads, passes, target).
        reference: the unpruned network.
        input_shape: one sample's shape.
        device: where timings run.
        baseline_latency_ms: the baseline's recorded latency (what ratios scale).
        scratch: a folder for the unpruned network's deployment export.
    """

    def __init__(self, spec: JobSpec, reference: nn.Module, input_shape: tuple[int, ...],
                 device: str, baseline_latency_ms: float, scratch: Path) -> None:
        self.spec = spec
        self.reference = reference
        self.input_shape = input_shape
        self.device = device
        self.baseline_latency_ms = baseline_latency_ms
        self.scratch = scratch
        self.runs = max(FINAL_RUNS, spec.latency.runs)
        self.timer: LatencyTimer = latency_timer(spec, reference, input_shape, device,
                                                 baseline_latency_ms)
        self._deployed: SideBySide | None = None
        # Architecture fingerprint -> its timing so far (``network(..., architecture=)``).
        self._timed: dict[str, FinalTiming] = {}

    @property
    def exported(self) -> bool:
        """Whether the delivered file itself is timed (an exported runtime on this worker)."""
        return self.spec.latency.runtime != "torch" and self.spec.latency.target is None

    def plan(self, plan: PrunePlan, example: torch.Tensor,
             missed: Callable[[dict[str, Any]], Mapping[str, float]],
             importance_factory: Callable[[nn.Module], Any] | None = None) -> TimedPlan:
        """``plan``'s network, pruned from a copy of the unpruned one, and its record as
        delivery judges it: the counted costs of one pass, the latency of the final timing
        (``network``; timed on when ``missed``, given the whole record, names a limit).

        Args:
            plan: the plan.
            example: an input batch for pruning (on the timer's device).
            missed: the limits a record misses (``search.delivery.Delivery.missed``).
            importance_factory: builds, for the copy, what ranks the channels a group
                loses (``SearchContext.importance_factory``; None: L1 magnitude).
        """
        model = copy.deepcopy(self.reference)
        apply_plan(model, plan, example,
                   importance=importance_factory(model) if importance_factory else None)
        # measure_model() contributes everything but latency, so it times a single pass.
        costs = measure_model(model, self.input_shape, device=self.device,
                              batch_size=self.spec.latency.batch_size, warmup=0, runs=1,
                              threads=self.spec.latency.threads).to_dict()
        costs["flops"] = costs["macs"]
        latency = self.network(model, lambda timed: bool(missed({**costs, **timed})),
                               architecture=plan.fingerprint())
        return TimedPlan(model, costs, {**costs, **latency})

    def network(self, network: nn.Module, misses: Callable[[dict[str, Any]], bool],
                architecture: str | None = None) -> dict[str, Any]:
        """A pruned network's latency fields, exported as trials export theirs.

        Args:
            network: the pruned network.
            misses: whether latency fields put the network over a limit (then it is timed
                for more rounds).
            architecture: its plan's fingerprint (``PrunePlan.fingerprint``): when this
                timer timed the architecture before, the timing goes on from those rounds.
        """
        if self.timer.target is not None:
            return self._settled(lambda runs: self.timer.compare(network, runs=runs), misses,
                                 architecture)
        side = self.timer.side_by_side()
        loaded = side.load(network)
        return self._settled(lambda runs: side.compare(loaded, self.timer.warmup, runs), misses,
                             architecture)

    def delivered(self, model: nn.Module, onnx_path: Path,
                  misses: Callable[[dict[str, Any]], bool],
                  architecture: str | None = None) -> dict[str, Any]:
        """The delivered model's latency fields: its ONNX file (``onnx_path``, the download)
        against the unpruned network exported the same way (``models.export.export_onnx``),
        in ONNX Runtime or OpenVINO; in eager PyTorch or on an agent, the model itself (going
        on from the rounds of its ``architecture``, as ``network``)."""
        if not self.exported:
            return {**self.network(model, misses, architecture), "latency_timed": "model"}
        if self._deployed is None:
            path = self.scratch / "unpruned.onnx"
            export_onnx(self.reference, path, self.input_shape)
            self._deployed = SideBySide(path, self.input_shape, self.spec.latency.runtime,
                                        self.device, self.spec.latency.batch_size,
                                        self.spec.latency.threads)
        side = self._deployed
        loaded = side.load(onnx_path)
        timed = self._settled(lambda runs: side.compare(loaded, self.timer.warmup, runs), misses)
        return {**timed, "latency_timed": "onnx file"}

    def timing(self, architecture: str) -> FinalTiming | None:
        """Every round this timer ran of ``architecture`` (a plan's fingerprint) so far."""
        return self._timed.get(architecture)

    def _settled(self, compare: Comparison, misses: Callable[[dict[str, Any]], bool],
                 architecture: str | None = None) -> dict[str, Any]:
        timing = stable_timing(compare, self.runs, earlier=self._timed.get(architecture or ""))
        retimed = misses(timing.record(self.baseline_latency_ms))
        if retimed:
            # Timed again and judged on every round together, not the faster timing: on a
            # loaded machine a ratio can come out too low as well as too high.
            timing = stable_timing(compare, self.runs, earlier=timing)
        if architecture is not None:
            self._timed[architecture] = timing
        return {**timing.record(self.baseline_latency_ms), "latency_retimed": retimed,
                "latency_runtime": self.timer.runtime}
