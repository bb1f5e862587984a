"""The job's stall detector, run by every participant while it waits on other trials.

``search.study.run_trials`` waits when every slot of the budget is finished or
held by a RUNNING trial; this watch is called each time round. A search idle
for one stall bound (``search.stall``) is reported on the job (one ``stall``
event, whichever participant saw it first; ``topiary_search_stalls_total``
counts them) and recovered: stale and ownerless trials are failed and re-queued,
and the wait loop looks at the budget again. Idle for a second bound, the
recovery did not help: the watch raises ``SearchStalled`` and the worker fails
the job with that reason instead of leaving it waiting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

import optuna

from search.budget import fail_stale_trials
from search.stall import STUCK_AFTER_BOUNDS, SearchStalled, StallPolicy, Standing, standing
from service.config import Settings
from service.jobs import report_stall
from workers.runtime import JobRun, WorkerRuntime

log = logging.getLogger("topiary.worker")


def stall_policy(settings: Settings) -> StallPolicy:
    return StallPolicy(floor_seconds=settings.stall_floor_seconds,
                       trial_multiple=settings.stall_trial_multiple)


class StallWatch:
    """Called with the study while this worker waits; reports, recovers, gives up.

    Args:
        runtime: the worker.
        run: its hold on the job.
        clock: the current time in Optuna's trial clock (``datetime.now``); tests pass their own.
    """

    def __init__(self, runtime: WorkerRuntime, run: JobRun,
                 clock: Callable[[], datetime] = datetime.now) -> None:
        self.runtime, self.run, self.clock = runtime, run, clock
        self.policy = stall_policy(runtime.settings)
        self.watching_since = clock()
        self.recovered_at: set[int] = set()

    def __call__(self, study: optuna.Study) -> None:
        now = self.clock()
        where = standing(study.get_trials(deepcopy=False), self.policy,
                         watching_since=self.watching_since, now=now)
        if where.stuck:
            raise SearchStalled(self._stuck_message(where))
        if where.stalled and where.finished not in self.recovered_at:
            self.recovered_at.add(where.finished)
            self._recover(study, where)

    def _recover(self, study: optuna.Study, where: Standing) -> None:
        failed = fail_stale_trials(study)
        held = ", ".join(map(str, where.running)) or "none"
        message = (f"search stalled: no trial finished for {where.idle_seconds:.0f} s "
                   f"(bound {where.bound_seconds:.0f} s) with {where.finished} of the budget "
                   f"finished; waiting on running trials {held}; failed stale trials to "
                   f"re-queue them and checking the budget again")
        data = {"idle_seconds": round(where.idle_seconds, 1),
                "bound_seconds": round(where.bound_seconds, 1), "finished": where.finished,
                "running": list(where.running), "ownerless_failed": failed,
                "worker": self.runtime.worker_id}
        reported = report_stall(self.runtime.engine, self.run.job.id, where.finished, message,
                                data)
        log.warning("job %s: %s%s", self.run.job.id, message,
                    "" if reported else " (already reported by another worker)")

    def _stuck_message(self, where: Standing) -> str:
        policy = self.policy
        held = ", ".join(map(str, where.running)) or "none"
        return (f"the search made no progress for {where.idle_seconds:.0f} s "
                f"({STUCK_AFTER_BOUNDS} stall bounds of {where.bound_seconds:.0f} s: the longer "
                f"of {policy.floor_seconds:.0f} s and {policy.trial_multiple:g} x its longest "
                f"trial) while its workers waited on running trials {held}, and failing "
                f"stale trials did not move it; submit the job again, and if its trials "
                f"really take this long raise TOPIARY_STALL_FLOOR_SECONDS")
