"""One formula for elapsed time and ETA, used by the workers and by the API."""

from __future__ import annotations

from core.progress import JobProgress, estimate_eta


def test_eta_is_wall_time_per_finished_trial_times_the_trials_left() -> None:
    assert estimate_eta(100.0, finished=4, total=10) == 150.0
    assert estimate_eta(100.0, finished=0, total=10) is None
    assert estimate_eta(100.0, finished=10, total=10) is None


def test_failed_trials_do_not_count_as_done_but_their_time_does() -> None:
    counts = JobProgress(trials_complete=3, trials_pruned=1, trials_failed=4,
                         trials_running=2, trials_total=10)
    timed = counts.timed(100.0)
    assert timed.trials_finished == 4
    assert (timed.elapsed_seconds, timed.eta_seconds) == (100.0, 150.0)


def test_an_ended_job_has_no_eta_and_reported_extras_pass_through() -> None:
    reported = JobProgress.model_validate({"trials_complete": 2, "trials_total": 10,
                                           "finalized": True})
    ended = reported.timed(12.3456, ended=True)
    assert ended.eta_seconds is None and ended.elapsed_seconds == 12.346
    assert ended.model_dump()["finalized"] is True
