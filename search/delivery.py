"""The delivered model meets its limits, or the job says by how much it missed.

The plan to deliver is chosen in order (``Delivery``): the search's best feasible
plan first, then, when its final timing (``search.final_timing``) misses a limit,
the next feasible plans by the objective (at most ``MAX_FALLBACKS`` more), each one
measured lower than the plan that missed on every limit it missed. When every plan
tried misses only latency limits, and by little (``NARROW_WITHIN``), that is timing
noise around a limit the search aimed at, not a wrong plan: the closest plan is
narrowed onto the limit (every surviving width scaled down on the space's grid,
``search.space.SearchSpace.scaled``) and tried, at most ``MAX_NARROWINGS`` times.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from core.limits import Limit, active_limits, limit_standings, missed_limits
from core.spec import JobSpec
from models.plan import PrunePlan
from search.fitting import MEASURED_MARGIN
from search.result import FinishedTrial, deliverable_trials, each_plan_once
from search.space import SearchSpace

__all__ = ["MAX_FALLBACKS", "MAX_NARROWINGS", "NARROW_WITHIN", "Attempt", "Delivery",
           "feasible_ranked"]

#: Plans tried after the best one misses a limit in its final timing.
MAX_FALLBACKS = 2
#: Narrowed plans tried when every plan tried missed only latency limits, each by at
#: most NARROW_WITHIN (``value / limit - 1``).
MAX_NARROWINGS = 3
NARROW_WITHIN = 0.1
#: The narrowest width factor a narrowing tries before giving up on moving the grid.
_NARROWEST_FACTOR = 0.5
def feasible_ranked(study: optuna.Study) -> list[FinishedTrial]:
    """Every complete trial that met all limits, was evaluated and prunes something
    (``search.result.deliverable_trials``), best objective first (accuracy first in
    every mode), each plan once (the best of the trials that measured it)."""
    return each_plan_once(sorted(deliverable_trials(study),
                                 key=lambda trial: (-trial.values[0] if trial.values else 0.0,
                                                    trial.number)))


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
        space: the search space, whose grid narrowed plans stay on; None: no narrowing.
    """

    def __init__(self, spec: JobSpec, baseline: Mapping[str, Any],
                 ranked: list[FinishedTrial], space: SearchSpace | None = None) -> None:
        self.spec = spec
        self.baseline = dict(baseline)
        self.limits: list[Limit] = active_limits(spec.objective.constraints, self.baseline)
        self._ranked = list(ranked)
        self._space = space
        self.attempts: list[Attempt] = []
        self._narrowed: set[str] = set()  # fingerprints of the narrowed plans handed out

    def next_plan(self) -> FinishedTrial | None:
        """The next plan to try: the best, then after a miss the best remaining plan whose
        trial measured less than the missed plan on every limit it missed (a different
        architecture), while fallbacks are left; then the closest plan narrowed onto the
        latency limits it missed (``narrowed_plan``); None when none is left."""
        tried = set(self.tried())
        if len(tried) <= MAX_FALLBACKS:
            for trial in self._ranked:
                if trial.number not in tried and self._promising(trial):
                    return trial
        return self.narrowed_plan()

    def narrowed_plan(self) -> FinishedTrial | None:
        """The closest plan so far with every surviving width scaled down so that its
        latency, as last timed, would come ``MEASURED_MARGIN`` under each limit it missed
        (on the space's grid; narrower until the grid moves). None without a space, after
        ``MAX_NARROWINGS``, or when the closest plan missed a counted limit or missed by
        more than ``NARROW_WITHIN`` (then it is the wrong plan, not a noisy timing)."""
        closest = self.closest()
        if (self._space is None or closest is None
                or sum(self.is_narrowed(a.trial) for a in self.attempts) >= MAX_NARROWINGS):
            return None
        metrics = {limit.name: limit.metric for limit in self.limits}
        if any(metrics[name] != "latency_ms" for name in closest.missed) \
                or max(closest.missed.values()) > NARROW_WITHIN:
            return None
        # From the last narrowed plan when it missed too (it is the narrowest so far).
        last = self.attempts[-1]
        start = last if self.is_narrowed(last.trial) and last.missed else closest
        plan = PrunePlan.from_dict(start.trial.plan)
        tried = {PrunePlan.from_dict(a.trial.plan).fingerprint() for a in self.attempts}
        factor = (1.0 - MEASURED_MARGIN) / (1.0 + max(start.missed.values()))
        narrower = self._space.scaled(plan, factor)
        while narrower.fingerprint() in tried and factor > _NARROWEST_FACTOR:
            factor *= 0.95
            narrower = self._space.scaled(plan, factor)
        if narrower.fingerprint() in tried:
            return None
        self._narrowed.add(narrower.fingerprint())
        record = start.trial.record.model_copy(
            update={"plan": narrower.to_dict(), "arch_fingerprint": None})
        return FinishedTrial(start.trial.number, start.trial.values, record)

    def is_narrowed(self, trial: FinishedTrial) -> bool:
        """Whether ``trial`` is a narrowed plan (``narrowed_plan``), not a trial's own."""
        return (trial.record.plan is not None
                and PrunePlan.from_dict(trial.plan).fingerprint() in self._narrowed)

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
        return missed_limits(self.limits, record)

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
