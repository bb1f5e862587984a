"""Chaos run: many small jobs on PostgreSQL while workers are SIGKILLed at random points,
the API is killed and restarted, and PostgreSQL itself is restarted.

One fault strikes a search right after a worker created a trial and before the trial's
first heartbeat (``tests.support.first_heartbeat``): the worker is SIGKILLed, or (the
run's first such fault, when it may restart PostgreSQL) the database is taken down for
10 s instead. That leaves a RUNNING trial nobody owns (issue 20).

Every job must end SUCCEEDED, or FAILED with a reason; none stuck; exactly
``n_trials`` finished trials per succeeded job, none counted twice; one checkpoint
per format whose bytes match their digest; and no download, taken continuously
while it all happens, may ever return a body that does not match its ETag.

    .venv/bin/python bench/chaos.py [--seed 0] [--jobs 20] [--faults 2] [--workers 2]
    .venv/bin/python bench/chaos.py --quick        # 2 jobs, one fault each: ~5 minutes

A searching job is reported stuck as soon as the workers' stall detector
(``workers.stall``, run with ``--stall-floor``) would have failed it and has not: its
participants are alive and no trial finished for two stall bounds (plus a margin).
The run ends when every job ended or is stuck, when ``--deadline-minutes`` pass, or
on SIGTERM / SIGINT; the report is printed in every case. The default run (20 jobs)
takes about an hour on two shared cores.

Needs PostgreSQL at TOPIARY_TEST_POSTGRES_URL (default: postgres@127.0.0.1:5432) or,
for the server restarts, PostgreSQL's server programs (``initdb``, ``pg_ctl``) on this
machine: the run then starts a server of its own, the one it restarts (else the
restarts are skipped and the report says so). Logs of every process stay under ``--keep``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import FrameType

import httpx

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from sqlalchemy import func, select  # noqa: E402

from bench._chaos_faults import (  # noqa: E402
    DATABASE_BEFORE_HEARTBEAT,
    Monkey,
    Plan,
    Tally,
    plan_faults,
)
from search.stall import STUCK_AFTER_BOUNDS, StallPolicy, standing  # noqa: E402
from service.db import session_scope  # noqa: E402
from service.jobs import JobParticipant, JobStatus, count_stalls  # noqa: E402
from tests.support import (  # noqa: E402
    PrivatePostgres,
    admin_url,
    private_postgres,
    private_postgres_unavailable,
)
from tests.support.cluster import Api, Cluster  # noqa: E402
from tests.support.invariants import (  # noqa: E402
    JobOutcome,
    download_problems,
    inspect_job,
    leftover_temporaries,
)

ADMIN_URL = admin_url()

#: How long after the stall detector should have failed a search it is called stuck
#: (its wait loop, the guarded move and a lease to notice).
STUCK_MARGIN_SECONDS = 30.0


def joined_at(cluster: Cluster, job_id: str) -> list[datetime]:
    """When the job's live participants joined its search (local time, as Optuna's clock)."""
    with session_scope(cluster.engine) as session:
        joined = session.scalars(select(JobParticipant.joined_at).where(
            JobParticipant.job_id == job_id,
            JobParticipant.lease_expires_at >= func.now())).all()
    return [moment.astimezone().replace(tzinfo=None) for moment in joined]


def why_stuck(cluster: Cluster, job_id: str, policy: StallPolicy) -> str | None:
    """Why a searching job is stuck by the stall detector's rule (None: it is not).

    Its participants are alive and none of its trials finished for longer than the
    detector waits before failing the search (two stall bounds), plus a margin.
    """
    if cluster.job(job_id).status != JobStatus.SEARCHING.value:
        return None
    participants = joined_at(cluster, job_id)
    if not participants:
        return None  # nobody on it: waiting for a worker, not stalled
    where = standing(cluster.study_trials(job_id), policy, watching_since=min(participants),
                     now=datetime.now())
    limit = STUCK_AFTER_BOUNDS * where.bound_seconds + STUCK_MARGIN_SECONDS
    if where.idle_seconds < limit:
        return None
    running = ", ".join(map(str, where.running)) or "none"
    return (f"searching with {len(participants)} live worker(s), no trial finished for "
            f"{where.idle_seconds:.0f} s (the detector fails it after "
            f"{STUCK_AFTER_BOUNDS * where.bound_seconds:.0f} s); running trials: {running}")


def waiting_on(monkey: Monkey, policy: StallPolicy) -> bool:
    """Whether a job is still active and not stuck; a job newly found stuck is printed now.

    True while our own database connection is down (ask again later).
    """
    try:
        active = monkey.active()
        for plan in active:
            if plan.job_id in monkey.tally.stuck:
                continue
            reason = why_stuck(monkey.cluster, plan.job_id, policy)
            if reason is not None:
                monkey.tally.stuck[plan.job_id] = reason
                print(f"STUCK {plan.job_id[:8]}: {reason}", flush=True)
        return any(plan.job_id not in monkey.tally.stuck for plan in active)
    except Exception:  # noqa: BLE001 - a PostgreSQL restart in progress: ask again later
        return True


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT: the run stops waiting and reports."""
    stop = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        print(f"signal {signum}: stopping the run and reporting", file=sys.stderr, flush=True)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


def download_continuously(api: Api, job_ids: list[str], tally: Tally,
                          stop: threading.Event) -> None:
    """Download every checkpoint a job lists, over and over; each body must match its ETag."""
    while not stop.is_set():
        for job_id in job_ids:
            try:
                with api.client(timeout=30) as client:
                    job = client.get(f"/v1/jobs/{job_id}").json()
                    for artifact in job.get("artifacts", []):
                        response = client.get(artifact["url"])
                        if response.status_code != 200:
                            continue
                        body = hashlib.sha256(response.content).hexdigest()
                        etag = response.headers.get("etag", "").strip('"')
                        with tally.lock:
                            tally.downloads_checked += 1
                            if body != etag:
                                tally.partial_downloads.append(
                                    f"{job_id} {artifact['format']}: "
                                    f"{len(response.content)} bytes, sha256 != ETag")
            except (httpx.HTTPError, ValueError):
                pass  # the API is restarting, or the database is: try again
        stop.wait(0.3)


@contextmanager
def database_server(private: bool) -> Iterator[PrivatePostgres | None]:
    """A PostgreSQL server of the run's own when ``private`` (the one the monkey restarts;
    other people's tests go on using the shared one), else None."""
    if not private:
        yield None
        return
    with private_postgres() as server:
        yield server


def run(arguments: argparse.Namespace) -> tuple[list[JobOutcome], list[Plan], Tally, float]:
    rng = random.Random(arguments.seed)
    home = Path(tempfile.mkdtemp(prefix="topiary-chaos-"))
    tally = Tally()
    restart_problem = private_postgres_unavailable()
    restarts = {"api": arguments.api_restarts,
                "postgres": 0 if restart_problem else arguments.pg_restarts,
                DATABASE_BEFORE_HEARTBEAT: 0 if restart_problem or not arguments.pg_restarts
                else 1}
    if restart_problem and arguments.pg_restarts:
        tally.notes.append(f"PostgreSQL restarts skipped: {restart_problem}")
    started = time.monotonic()
    stop = stop_on_signals()
    policy = StallPolicy(floor_seconds=arguments.stall_floor,
                         trial_multiple=arguments.stall_multiple)
    with database_server(restarts["postgres"] + restarts[DATABASE_BEFORE_HEARTBEAT] > 0) \
            as server, \
            Cluster.create(server.admin_url if server else ADMIN_URL, home / "home",
                           server=server, lease_seconds=arguments.lease,
                           # The downloads checked all the time are not an abuse to limit.
                           rate_limit="10000/second",
                           stall_floor_seconds=policy.floor_seconds,
                           stall_trial_multiple=policy.trial_multiple) as cluster:
        api = cluster.start_api()
        for _ in range(arguments.workers):
            cluster.start_worker()
        job_ids = [cluster.submit(name=f"chaos-{index}", seed=rng.randrange(1000),
                                  search={"n_trials": rng.choice([3, 4, 5])})
                   for index in range(arguments.jobs)]
        plans = plan_faults(job_ids, arguments.faults, rng)
        monkey = Monkey(cluster, api, plans, rng, tally, restarts)
        stop_downloads = threading.Event()
        threads = [threading.Thread(target=monkey.run, daemon=True),
                   threading.Thread(target=download_continuously, daemon=True,
                                    args=(api, job_ids, tally, stop_downloads))]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + arguments.deadline_minutes * 60
        while waiting_on(monkey, policy):
            if stop.is_set():
                tally.ended_by = "stopped by a signal"
                break
            if time.monotonic() >= deadline:
                tally.ended_by = f"deadline of {arguments.deadline_minutes:g} min passed"
                break
            stop.wait(2)
        else:
            if tally.stuck:
                tally.ended_by = "every job ended or is stuck"
        monkey.stop.set()
        stop_downloads.set()
        for thread in threads:
            thread.join(60)
        outcomes = [inspect_job(cluster, job_id) for job_id in job_ids]
        tally.stalls_reported = count_stalls(cluster.engine)
        for outcome in outcomes:
            if outcome.status == JobStatus.SUCCEEDED.value:
                tally.partial_downloads += download_problems(api, cluster.job(outcome.job_id))
            leftovers = leftover_temporaries(cluster, outcome.job_id)
            if leftovers:
                tally.notes.append(f"{outcome.job_id[:8]}: {len(leftovers)} temporary file(s) "
                                   "left by a killed writer (never served)")
        if arguments.keep:
            shutil.copytree(home / "home", arguments.keep, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("*.safetensors", "*.onnx", "*.pt"))
    shutil.rmtree(home, ignore_errors=True)
    return outcomes, plans, tally, time.monotonic() - started


def report(arguments: argparse.Namespace, outcomes: list[JobOutcome], plans: list[Plan],
           tally: Tally, seconds: float) -> int:
    succeeded = sum(o.status == JobStatus.SUCCEEDED.value for o in outcomes)
    failed = [o for o in outcomes if o.status == JobStatus.FAILED.value]
    with_reason = sum(1 for o in failed if o.error)
    stuck = sum(o.stuck for o in outcomes)
    lost = sum(o.lost_trials for o in outcomes)
    duplicated = sum(o.duplicated_trials for o in outcomes)
    problems = [f"{o.job_id[:8]}: {p}" for o in outcomes for p in o.problems]
    detector_stuck = sum(o.stuck and o.job_id in tally.stuck for o in outcomes)
    stall_failures = sum(1 for o in failed if (o.error or "").startswith("search_stalled"))
    print(f"chaos run: seed {arguments.seed}, {len(outcomes)} jobs, {arguments.workers} "
          f"workers kept alive, lease {arguments.lease:g} s, stall floor "
          f"{arguments.stall_floor:g} s, {seconds / 60:.1f} min ({tally.ended_by})\n")
    print("| fault injected | count |\n|---|---:|")
    for name, count in sorted(tally.faults.items()):
        print(f"| {name} | {count} |")
    print(f"| **total** | **{sum(tally.faults.values())}** |\n")
    print("| job | faults planned | injected | status | attempts lost | finished / n_trials |")
    print("|---|---|---|---|---:|---|")
    for plan, outcome in zip(plans, outcomes, strict=True):
        status = outcome.status + (f" ({outcome.error[:60]})" if outcome.error else "")
        if outcome.stuck:
            status += " (stuck)" if outcome.job_id in tally.stuck else " (unfinished)"
        print(f"| {plan.job_id[:8]} | {', '.join(plan.points)} | {', '.join(plan.injected) or '-'}"
              f" | {status} | {outcome.attempts} | {outcome.finished_trials} / "
              f"{outcome.n_trials} |")
    print("\n| result | value | goal |\n|---|---:|---|")
    print(f"| faults injected | {sum(tally.faults.values())} | |")
    print(f"| jobs completed (succeeded) | {succeeded} | |")
    print(f"| jobs failed with a reason | {with_reason} | |")
    print(f"| jobs failed without a reason | {len(failed) - with_reason} | 0 |")
    print(f"| jobs stuck (the stall detector's rule) | {detector_stuck} | 0 |")
    print(f"| jobs unfinished when the run ended | {stuck - detector_stuck} | 0 |")
    print(f"| stalls reported by the workers (stall events) | {tally.stalls_reported} | |")
    print(f"| jobs failed by the stall detector | {stall_failures} | |")
    print(f"| trials lost | {lost} | 0 |")
    print(f"| trials duplicated | {duplicated} | 0 |")
    print(f"| downloads checked while faults ran | {tally.downloads_checked} | |")
    print(f"| partial downloads | {len(tally.partial_downloads)} | 0 |")
    print(f"| other broken invariants | {len(problems) - stuck} | 0 |")
    if tally.monkey_errors:
        tally.notes.append("the fault injector's own database reads failed (retried): "
                           + ", ".join(f"{n} x {c}" for n, c in tally.monkey_errors.items()))
    stuck_reasons = [f"{job_id[:8]} stuck: {why}" for job_id, why in tally.stuck.items()]
    for line in [*problems, *stuck_reasons, *tally.partial_downloads, *tally.notes]:
        print(f"  - {line}")
    bad = stuck + lost + duplicated + len(tally.partial_downloads) + len(problems)
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--faults", type=int, default=2, help="worker kills per job, at most")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--api-restarts", type=int, default=1)
    parser.add_argument("--pg-restarts", type=int, default=2)
    parser.add_argument("--lease", type=float, default=4.0, help="TOPIARY_LEASE_SECONDS")
    parser.add_argument("--deadline-minutes", type=float, default=None,
                        help="stop and report after this long (default: 5 per job, at least 25)")
    parser.add_argument("--stall-floor", type=float, default=120.0,
                        help="TOPIARY_STALL_FLOOR_SECONDS of the workers (and of the stuck rule)")
    parser.add_argument("--stall-multiple", type=float, default=3.0,
                        help="TOPIARY_STALL_TRIAL_MULTIPLE of the workers")
    parser.add_argument("--keep", type=Path, default=None, help="copy process logs here")
    parser.add_argument("--quick", action="store_true", help="2 jobs, 1 fault each")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.jobs, arguments.faults, arguments.pg_restarts = 2, 1, 1
        arguments.deadline_minutes = min(arguments.deadline_minutes or 12, 12)
    if arguments.deadline_minutes is None:
        arguments.deadline_minutes = max(25.0, 5.0 * arguments.jobs)
    return report(arguments, *run(arguments))


if __name__ == "__main__":
    sys.exit(main())
