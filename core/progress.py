"""A job's progress: trial counts, elapsed time and the estimate of the time left.

Workers count a study's trials after each one; the API shows those counts with the
time since the job started. Both time them here, with one formula.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


def estimate_eta(elapsed_seconds: float, finished: int, total: int) -> float | None:
    """Seconds left, if the remaining trials take as long as the finished ones did.

    Wall-clock time per finished trial already reflects how many workers run trials
    side by side, and includes the time lost to trials that failed.

    Args:
        elapsed_seconds: time since the work started.
        finished: trials that count towards the budget (complete or pruned).
        total: the budget (``search.n_trials``).

    Returns:
        The estimate, or None before the first trial finishes or once the budget is met.
    """
    if finished <= 0 or finished >= total:
        return None
    return elapsed_seconds / finished * (total - finished)


class JobProgress(BaseModel):
    """Trial counts from the workers, plus elapsed time and a rough ETA.

    Other keys a worker reports pass through (``finalized``).
    """

    model_config = ConfigDict(extra="allow")

    trials_complete: int = 0
    trials_running: int = 0
    trials_failed: int = 0
    trials_pruned: int = 0
    trials_total: int = 0
    elapsed_seconds: float | None = None
    eta_seconds: float | None = None

    @property
    def trials_finished(self) -> int:
        """Trials that count towards the budget: complete or pruned."""
        return self.trials_complete + self.trials_pruned

    def timed(self, elapsed_seconds: float, *, ended: bool = False) -> JobProgress:
        """These counts with ``elapsed_seconds`` and the ETA (none once the job ``ended``)."""
        eta = None if ended else estimate_eta(elapsed_seconds, self.trials_finished,
                                              self.trials_total)
        return self.model_copy(update={
            "elapsed_seconds": round(elapsed_seconds, 3),
            "eta_seconds": round(eta, 1) if eta is not None else None})
