"""What a pruned network costs, measured one way for the plans seeding sizes and for trials.

FLOPs and parameters are counted and memory is measured on the really pruned
network (``models.measure``). Latency is timed side by side with the unpruned
network (their passes alternate), in the job's runtime (``models.runtimes``: eager
PyTorch, or both exported to ONNX and run in ONNX Runtime or OpenVINO), and
expressed in the conditions the baseline's latency was recorded in: the
baseline was timed once, while preparing, and a machine busier or quieter now
than then would otherwise shift every comparison with it (an unpruned plan
passed a 50% latency limit that way).

A network that misses only latency limits is timed once more and the faster
timing stands (``Aim.worth_retiming``): other processes on a shared machine only
ever make a timing slower, and one unlucky timing would discard a plan for good
(a trial) or cut a width bisection short (seeding).

Timings are kept by network (``architecture_fingerprint``) in a
``LatencyCache``: this process's timings first, then the study's, where every
trial can read them: the finished trials' records, and the timings seeding
sized its plans with (``LatencyCache.share``). A known latency is not timed
again: a plan sized to its limit on one timing would miss it on every other
timing, and the best warm start would be lost.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from torch import nn

from core.trial import TrialRecord
from models.latency import LatencyResult
from models.measure import (
    count_flops_params,
    measure_latency,
    measure_model,
    memory_mb,
)
from models.runtimes import SideBySide, compare_in_runtime
from search.constraints import Limit

__all__ = ["RETIME_WITHIN", "SEEDED_LATENCY_ATTR", "Aim", "CostModel", "KnownLatency",
           "LatencyCache", "LatencyTimer", "architecture_fingerprint"]

#: Seeding times again a plan that misses its latency aim by at most this share of the limit.
RETIME_WITHIN = 0.1
#: Study user attribute: network fingerprint -> the latency seeding timed it at.
SEEDED_LATENCY_ATTR = "seeded_latency"
#: Limits on these are counted, exactly; the others are measured, with noise.
COUNTED_METRICS = frozenset({"flops", "params"})
#: Passes ``measure_model`` times when the latency it records comes from elsewhere.
_QUICK_RUNS = 3


def architecture_fingerprint(model: nn.Module) -> str:
    """Same parameter names and shapes = same architecture = same latency."""
    shapes = ";".join(f"{name}:{tuple(p.shape)}" for name, p in model.state_dict().items())
    return hashlib.sha256(shapes.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class LatencyTimer:
    """Where and how networks are measured: side by side with ``reference`` when its
    recorded latency is known, else alone (eager PyTorch; in another runtime, the
    reference is timed alongside all the same and only the network's time is kept).

    In an exported runtime (``models.runtimes``) the reference is exported and loaded
    once, on the first timing, and every network is exported the same way; with a
    ``target`` (a latency agent) both are sent there.

    Attributes:
        reference: the unpruned network (never modified).
        input_shape: one sample's shape.
        device: where latency and activation memory are measured.
        baseline_latency_ms: ``reference``'s recorded latency; None: time networks alone.
        batch_size: the batch latency and memory are measured at.
        warmup, runs: passes before and during a timing.
        runtime: ``latency.runtime``: torch, onnxruntime or openvino.
        threads: intra-op threads of every timing (None: the process's).
        target: ``latency.target``, a latency agent that times instead of this worker.
    """

    reference: nn.Module
    input_shape: tuple[int, ...]
    device: str | torch.device
    baseline_latency_ms: float | None = None
    batch_size: int = 1
    warmup: int = 5
    runs: int = 30
    runtime: str = "torch"
    threads: int | None = None
    target: str | None = None
    _side_by_side: list[SideBySide] = field(default_factory=list, compare=False, repr=False)

    def time(self, network: nn.Module) -> dict[str, Any]:
        """``latency_ms``, ``latency_p90_ms`` and ``latency_runtime`` (side by side: also
        ``latency_ratio`` and ``latency_raw_ms``: the measured ratio scales the recorded
        reference, so load on the machine now does not shift it)."""
        if self.baseline_latency_ms is None and self.runtime == "torch" and self.target is None:
            alone = measure_latency(network, self.input_shape, self.device,
                                    batch_size=self.batch_size, warmup=self.warmup,
                                    runs=self.runs, threads=self.threads)
            return {"latency_ms": alone.median_ms, "latency_p90_ms": alone.p90_ms,
                    "latency_runtime": self.runtime}
        reference_now, timed = self.compare(network)
        if self.baseline_latency_ms is None:
            return {"latency_ms": timed.median_ms, "latency_p90_ms": timed.p90_ms,
                    "latency_runtime": self.runtime}
        scale = self.baseline_latency_ms / reference_now.median_ms
        return {"latency_ms": timed.median_ms * scale, "latency_p90_ms": timed.p90_ms * scale,
                "latency_ratio": timed.median_ms / reference_now.median_ms,
                "latency_raw_ms": timed.median_ms, "latency_runtime": self.runtime}

    def compare(self, network: nn.Module, runs: int | None = None
                ) -> tuple[LatencyResult, LatencyResult]:
        """``(reference's, network's)`` latency, timed side by side in the runtime."""
        runs = runs or self.runs
        if self.target is not None:
            return compare_in_runtime(self.reference, network, self.input_shape, self.runtime,
                                      self.device, batch_size=self.batch_size,
                                      warmup=self.warmup, runs=runs, threads=self.threads,
                                      target=self.target)
        return self.side_by_side().compare(network, self.warmup, runs)

    def side_by_side(self) -> SideBySide:
        """The reference, exported and loaded in the runtime on first use, then kept."""
        if not self._side_by_side:
            self._side_by_side.append(SideBySide(self.reference, self.input_shape, self.runtime,
                                                 self.device, self.batch_size, self.threads))
        return self._side_by_side[0]


@dataclass(frozen=True)
class Aim:
    """What costs must meet, and which misses are timed again.

    Attributes:
        limits: the active limits (``search.constraints``).
        margin: the share of a measured limit (latency, memory) left free for noise:
            a measured cost misses when it comes less than this far under its limit.
        retime_within: a network that misses only latency limits is timed again when
            it misses each by at most this share of the limit past the margin; None:
            however far it misses.
    """

    limits: tuple[Limit, ...]
    margin: float = 0.0
    retime_within: float | None = None

    @property
    def measured(self) -> bool:
        """Whether a limit bounds a measured (not counted) cost."""
        return any(limit.metric not in COUNTED_METRICS for limit in self.limits)

    def missed(self, record: dict[str, Any]) -> list[Limit]:
        """The limits ``record`` misses."""
        return [limit for limit in self.limits if limit.violation(record)
                > (0.0 if limit.metric in COUNTED_METRICS else -self.margin)]

    def worth_retiming(self, record: dict[str, Any]) -> bool:
        """Whether a fresh timing may be noise: latency alone is missed, and near enough."""
        missed = self.missed(record)
        return bool(missed) and all(
            limit.metric == "latency_ms"
            and (self.retime_within is None
                 or limit.violation(record) <= self.retime_within - self.margin)
            for limit in missed)


@dataclass(frozen=True)
class KnownLatency:
    """A latency found in a ``LatencyCache``.

    Attributes:
        latency_ms, latency_p90_ms: as a trial records them.
        seeded: it is the timing seeding sized a plan with (``LatencyCache.share``).
    """

    latency_ms: float
    latency_p90_ms: float
    seeded: bool = False

    def as_record(self) -> dict[str, float]:
        return {"latency_ms": self.latency_ms, "latency_p90_ms": self.latency_p90_ms}


def _known(latency: Mapping[str, Any], seeded: bool = False) -> KnownLatency:
    return KnownLatency(float(latency["latency_ms"]), float(latency["latency_p90_ms"]), seeded)


def _finished_trial_latency(study: optuna.Study, fingerprint: str) -> KnownLatency | None:
    """The latency a finished trial of ``study`` recorded for this network."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        record = TrialRecord.from_trial(trial)
        if (record.arch_fingerprint == fingerprint and record.latency_ms is not None
                and record.latency_p90_ms is not None):
            return KnownLatency(record.latency_ms, record.latency_p90_ms)
    return None


class LatencyCache:
    """Latencies by network fingerprint (``architecture_fingerprint``).

    ``get`` looks in this cache's own timings, then in the study, where every
    trial can read them: a finished trial's record, then the timings shared by
    ``share``. What it finds in the study is kept here.
    """

    def __init__(self) -> None:
        self._known: dict[str, KnownLatency] = {}

    def __len__(self) -> int:
        return len(self._known)

    def __iter__(self) -> Iterator[str]:
        return iter(self._known)

    def put(self, fingerprint: str, latency: Mapping[str, Any]) -> None:
        """Keep the ``latency_ms`` and ``latency_p90_ms`` of ``latency``."""
        self._known[fingerprint] = _known(latency)

    def get(self, fingerprint: str, study: optuna.Study | None = None) -> KnownLatency | None:
        """The network's known latency, or None when it must be timed."""
        found = self._known.get(fingerprint)
        if found is not None or study is None:
            return found
        found = _finished_trial_latency(study, fingerprint)
        if found is None:
            seeded = study.user_attrs.get(SEEDED_LATENCY_ATTR, {}).get(fingerprint)
            found = _known(seeded, seeded=True) if seeded is not None else None
        if found is not None:
            self._known[fingerprint] = KnownLatency(found.latency_ms, found.latency_p90_ms)
        return found

    def share(self, study: optuna.Study) -> None:
        """Add every latency held here to the study's seeded latencies, for any of its
        trials to reuse (``get`` with the study)."""
        shared = dict(study.user_attrs.get(SEEDED_LATENCY_ATTR, {}))
        shared.update({fingerprint: known.as_record()
                       for fingerprint, known in self._known.items()})
        study.set_user_attr(SEEDED_LATENCY_ATTR, shared)


class CostModel:
    """The costs of pruned copies of one network, as seeding and trials measure them.

    Args:
        timer: how networks are measured (side by side with the unpruned one when
            its latency is known).
        aim: the limits, and which misses are timed again.
        cache: known latencies (a new, empty one when None).
    """

    def __init__(self, timer: LatencyTimer, aim: Aim, cache: LatencyCache | None = None) -> None:
        self.timer = timer
        self.aim = aim
        self.cache = cache if cache is not None else LatencyCache()

    def limited_costs(self, network: nn.Module) -> dict[str, Any]:
        """FLOPs and parameters, and memory and latency when a limit bounds them: what
        seeding checks plans with. Latency comes from this process's cache or is timed."""
        timer = self.timer
        macs, params = count_flops_params(network, timer.input_shape)
        record: dict[str, Any] = {"flops": float(macs), "params": float(params),
                                  "arch_fingerprint": architecture_fingerprint(network)}
        metrics = {limit.metric for limit in self.aim.limits}
        if "memory_mb" in metrics:
            record["memory_mb"] = memory_mb(network, timer.input_shape, timer.batch_size,
                                            timer.device)
        if "latency_ms" in metrics:
            self._settle_latency(network, record, self.cache.get(record["arch_fingerprint"]),
                                 time_now=True)
        return record

    def trial_costs(self, network: nn.Module, study: optuna.Study,
                    side_by_side: bool) -> dict[str, Any]:
        """Everything a trial records about its network's cost: ``measure_model``'s
        record, ``flops``, ``arch_fingerprint``, and the latency known to the study, else
        timed side by side (when ``side_by_side``; else ``measure_model``'s own timing),
        with ``latency_reused``, ``latency_seeded`` and ``latency_retimed`` saying which."""
        timer = self.timer
        fingerprint = architecture_fingerprint(network)
        known = self.cache.get(fingerprint, study)
        # When the latency comes from the cache or a side-by-side timing, measure_model()
        # times only a few passes of its own (FLOPs and memory still count).
        quick = known is not None or side_by_side
        cost = measure_model(network, timer.input_shape, device=timer.device,
                             batch_size=timer.batch_size, warmup=0 if quick else timer.warmup,
                             runs=_QUICK_RUNS if quick else timer.runs).to_dict()
        record = {**cost, "flops": cost["macs"], "arch_fingerprint": fingerprint}
        self._settle_latency(network, record, known, time_now=side_by_side)
        return record

    def _settle_latency(self, network: nn.Module, record: dict[str, Any],
                        known: KnownLatency | None, time_now: bool) -> None:
        """Put the known latency in ``record``, or time it (when ``time_now``), time a
        near miss again and cache what stands."""
        retimed = False
        if known is not None:
            record.update(known.as_record())
        else:
            if time_now:
                record.update(self.timer.time(network))
            retimed = self.aim.worth_retiming(record)
            if retimed:
                again = self.timer.time(network)
                if again["latency_ms"] < record["latency_ms"]:
                    record.update(again)
            self.cache.put(record["arch_fingerprint"], record)
        record["latency_runtime"] = self.timer.runtime
        record["latency_reused"] = known is not None
        record["latency_seeded"] = known is not None and known.seeded
        record["latency_retimed"] = retimed
