"""A search that stopped moving: how long is too long, judged by the study's own trial times.

A job's search moves when a trial finishes (COMPLETE or PRUNED, surplus ones
aside). The stall bound is the longer of a floor and a multiple of the longest
trial finished so far; a search idle for one bound is *stalled* (report it,
fail stale and ownerless trials, look at the budget again), idle for two
bounds it is *stuck* (the recovery did not move it: the job fails with a reason).

Idle time counts from the last finished trial, or from when the watcher began
to watch if that is later: a worker that joins a search abandoned for an hour
has not watched it stall for an hour.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from optuna.trial import FrozenTrial, TrialState

from core.errors import TopiaryError
from search.budget import FINISHED, is_surplus

#: Bound -> stuck: one bound to notice and recover, a second one to see that it helped.
STUCK_AFTER_BOUNDS = 2


class SearchStalled(TopiaryError):
    """The search made no progress for two stall bounds, recovery notwithstanding."""

    code = "search_stalled"


@dataclass(frozen=True)
class StallPolicy:
    """How long a search may go without a finished trial.

    Attributes:
        floor_seconds: the shortest bound (the first trials have no times to go by).
        trial_multiple: the bound is at least this many times the longest finished trial.
    """

    floor_seconds: float = 600.0
    trial_multiple: float = 3.0

    def bound_seconds(self, trials: Iterable[FrozenTrial]) -> float:
        return max(self.floor_seconds, self.trial_multiple * longest_trial_seconds(trials))


def counted_finished(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """Finished trials that count towards the budget (surplus ones do not)."""
    return [t for t in trials if t.state in FINISHED and not is_surplus(t)]


def longest_trial_seconds(trials: Iterable[FrozenTrial]) -> float:
    return max((
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in counted_finished(trials)
        if t.datetime_start is not None and t.datetime_complete is not None), default=0.0)


def last_progress(trials: Iterable[FrozenTrial]) -> datetime | None:
    """When the latest counted trial finished (None: none has)."""
    return max((t.datetime_complete for t in counted_finished(trials)
                if t.datetime_complete is not None), default=None)


@dataclass(frozen=True)
class Standing:
    """Where a study stands for the stall detector.

    Attributes:
        finished: counted finished trials (the stall's identity: one report per count).
        idle_seconds: since the last finished trial, or since watching began if later.
        bound_seconds: the stall bound now.
        running: numbers of the RUNNING trials (held slots), surplus ones aside.
    """

    finished: int
    idle_seconds: float
    bound_seconds: float
    running: tuple[int, ...]

    @property
    def stalled(self) -> bool:
        return self.idle_seconds >= self.bound_seconds

    @property
    def stuck(self) -> bool:
        return self.idle_seconds >= STUCK_AFTER_BOUNDS * self.bound_seconds


def standing(trials: list[FrozenTrial], policy: StallPolicy, *, watching_since: datetime,
             now: datetime) -> Standing:
    """The study's standing now.

    Args:
        trials: every trial of the study.
        policy: the stall bound's settings.
        watching_since: when the caller began to watch this search.
        now: the current time, in the clock Optuna stamps trials with (``datetime.now()``).
    """
    last = last_progress(trials)
    since = watching_since if last is None else max(last, watching_since)
    running = tuple(t.number for t in trials
                    if t.state == TrialState.RUNNING and not is_surplus(t))
    return Standing(finished=len(counted_finished(trials)),
                    idle_seconds=max(0.0, (now - since).total_seconds()),
                    bound_seconds=policy.bound_seconds(trials), running=running)
