"""The delivered model meets its limits, or the job says by how much it missed.

A trial's latency is one timing; the model a user downloads is timed again, side
by side with the unpruned network, in rounds until the median ratio is stable
(``stable_timing``). The plan to deliver is chosen in order (``Delivery``): the
search's best feasible plan first, then, when it misses a limit on that timing,
the next feasible plans by the objective (at most ``MAX_FALLBACKS`` more), each
one measured lower than the plan that missed on every limit it missed. A plan's
architecture is timed before its long fine-tune (latency does not depend on the
weights), and the exported file is timed again afterwards, in the job's runtime.
A timing that misses goes on for more rounds and is judged on all of them: unlike
one network's time, a ratio of two can come out too low on a busy machine as well
as too high (the longer passes are interrupted more often), so the faster of two
timings is no safer a verdict for the model a user is promised. For the same
reason the verdict takes the larger of the median ratio and the ratio of the
fastest passes (``FinalTiming.verdict_ratio``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from torch import nn

from core.limits import Limit, active_limits, limit_standings, violations
from core.spec import JobSpec
from models.export import export_onnx
from models.latency import LatencyResult
from models.runtimes import SideBySide
from search.costs import LatencyTimer
from search.objective import latency_timer
from search.result import FinishedTrial, deliverable_trials

__all__ = ["FINAL_RUNS", "MAX_FALLBACKS", "Attempt", "Delivery", "FinalTimer", "FinalTiming",
           "feasible_ranked", "stable_timing"]

#: Plans tried after the best one misses a limit in its final timing.
MAX_FALLBACKS = 2
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

    @property
    def exported(self) -> bool:
        """Whether the delivered file itself is timed (an exported runtime on this worker)."""
        return self.spec.latency.runtime != "torch" and self.spec.latency.target is None

    def network(self, network: nn.Module, misses: Callable[[dict[str, Any]], bool]
                ) -> dict[str, Any]:
        """A pruned network's latency fields, exported as trials export theirs."""
        if self.timer.target is not None:
            return self._settled(lambda runs: self.timer.compare(network, runs=runs), misses)
        side = self.timer.side_by_side()
        loaded = side.load(network)
        return self._settled(lambda runs: side.compare(loaded, self.timer.warmup, runs), misses)

    def delivered(self, model: nn.Module, onnx_path: Path,
                  misses: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The delivered model's latency fields: its ONNX file (``onnx_path``, the download)
        against the unpruned network exported the same way (``models.export.export_onnx``),
        in ONNX Runtime or OpenVINO; in eager PyTorch or on an agent, the model itself."""
        if not self.exported:
            return {**self.network(model, misses), "latency_timed": "model"}
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

    def _settled(self, compare: Comparison, misses: Callable[[dict[str, Any]], bool]
                 ) -> dict[str, Any]:
        timing = stable_timing(compare, self.runs)
        retimed = misses(timing.record(self.baseline_latency_ms))
        if retimed:
            # Timed again and judged on every round together, not the faster timing: on a
            # loaded machine a ratio can come out too low as well as too high.
            timing = stable_timing(compare, self.runs, earlier=timing)
        return {**timing.record(self.baseline_latency_ms), "latency_retimed": retimed,
                "latency_runtime": self.timer.runtime}


def feasible_ranked(study: optuna.Study) -> list[FinishedTrial]:
    """Every complete trial that met all limits, was evaluated and prunes something
    (``search.result.deliverable_trials``), best objective first (accuracy first in
    every mode)."""
    usable = deliverable_trials(study)
    return sorted(usable, key=lambda trial: (-trial.values[0] if trial.values else 0.0,
                                             trial.number))


@dataclass
class Attempt:
    """One plan tried for delivery and what its final timing found.

    Attributes:
        trial: the trial whose plan it is.
        record: the measured costs (latency from the final timing).
        missed: the limits it missed, with ``value / limit - 1``.
        stage: ``architecture`` (timed before the long fine-tune) or ``artifact`` (the
            exported file, after it).
    """

    trial: FinishedTrial
    record: dict[str, Any]
    missed: dict[str, float]
    stage: str


class Delivery:
    """Which plan to deliver, and whether what was measured meets the limits.

    Args:
        spec: the job spec.
        baseline: the baseline's metrics (ratios are of these).
        ranked: the feasible trials, best first (``feasible_ranked``); the first is the
            search's best.
    """

    def __init__(self, spec: JobSpec, baseline: Mapping[str, Any],
                 ranked: list[FinishedTrial]) -> None:
        self.spec = spec
        self.baseline = dict(baseline)
        self.limits: list[Limit] = active_limits(spec.objective.constraints, self.baseline)
        self._ranked = list(ranked)
        self.attempts: list[Attempt] = []

    def next_plan(self) -> FinishedTrial | None:
        """The next plan to try: the best, then after a miss the best remaining plan whose
        trial measured less than the missed plan on every limit it missed (a different
        architecture), while fallbacks are left; None when none is."""
        tried = set(self.tried())
        if len(tried) > MAX_FALLBACKS:
            return None
        for trial in self._ranked:
            if trial.number in tried or not self._promising(trial):
                continue
            return trial
        return None

    def _promising(self, trial: FinishedTrial) -> bool:
        for attempt in self.attempts:
            if attempt.trial.record.arch_fingerprint == trial.record.arch_fingerprint \
                    and trial.record.arch_fingerprint is not None:
                return False
            for limit in self.limits:
                if limit.name not in attempt.missed:
                    continue
                now = getattr(trial.record, limit.metric, None)
                then = getattr(attempt.trial.record, limit.metric, None)
                if now is not None and then is not None and now >= then:
                    return False
        return True

    def tried(self) -> list[int]:
        """The trials whose plans were tried, in order."""
        return list(dict.fromkeys(attempt.trial.number for attempt in self.attempts))

    def missed(self, record: Mapping[str, Any]) -> dict[str, float]:
        """The limits ``record`` misses: name -> ``value / limit - 1`` (> 0)."""
        return {name: value for name, value in violations(self.limits, record).items()
                if value > 0}

    def judge(self, trial: FinishedTrial, record: dict[str, Any], stage: str) -> bool:
        """Record what the final timing of ``trial``'s plan found; True when it meets every
        limit."""
        missed = self.missed(record)
        self.attempts.append(Attempt(trial, record, missed, stage))
        return not missed

    def standings(self, record: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every limit beside ``record``'s value (``core.limits.limit_standings``)."""
        return [standing.model_dump() for standing in limit_standings(
            self.spec.objective.constraints, self.baseline, record)]

    def closest(self) -> Attempt | None:
        """Of the attempts that missed, the one that missed by the least (its worst-missed
        limit); a plan's network may pass and its delivered file miss."""
        return min((attempt for attempt in self.attempts if attempt.missed),
                   key=lambda attempt: max(attempt.missed.values()), default=None)

    def miss_message(self) -> str:
        """Why nothing is delivered: by how much the closest plan missed, against which
        limit, and which plans were tried."""
        closest = self.closest()
        if closest is None:
            return "no feasible plan to finalise"
        runtime = self.spec.latency.runtime
        parts = []
        for standing in self.standings(closest.record):
            if standing["met"] is False:
                parts.append(f"{standing['name']} {standing['limit']:g}: delivered "
                             f"{standing['delivered']:.4g}, {standing['missed_by']:.1%} over")
        tried = ", ".join(str(number) for number in self.tried())
        runs = int(closest.record.get("latency_runs", 0))
        return (f"the final model misses its limit when re-timed side by side with the "
                f"baseline in {runtime} ({runs} passes each): {'; '.join(parts)}; plans of "
                f"trials {tried} tried, the closest was trial {closest.trial.number}; loosen "
                "the limit or allow more trials")
