"""The faults of a chaos run (``bench/chaos.py``): which faults each job gets, in pipeline
order, and the monkey that injects them (worker SIGKILLs at planned points, a strike
before a trial's first heartbeat, API and PostgreSQL restarts)."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from service.jobs import JobStatus
from tests.support.cluster import FAULT_POINTS, Api, Cluster, victim_at
from tests.support.first_heartbeat import UnownedTrial, strike_before_first_heartbeat

#: A worker's trial struck after Optuna created it, before its first heartbeat.
BEFORE_FIRST_HEARTBEAT = "before_first_heartbeat"
# Pipeline order: a job's planned faults are taken from here in this order.
ORDER = ("preparing", "scoring", BEFORE_FIRST_HEARTBEAT, "mid_trial", "finalizing", "export")
assert set(ORDER) == {*FAULT_POINTS, BEFORE_FIRST_HEARTBEAT}
#: The restart budget of the database going down before a trial's first heartbeat (one
#: per run, apart from ``--pg-restarts``, which random restarts use up early).
DATABASE_BEFORE_HEARTBEAT = "postgres before a first heartbeat"
#: Seconds between two tries at catching a job's trial before its first heartbeat.
STRIKE_RETRY_SECONDS = 3.0


@dataclass
class Plan:
    """The faults planned for one job, in the order the job will reach them."""

    job_id: str
    points: list[str]
    injected: list[str] = field(default_factory=list)
    next_strike: float = 0.0

    def next_point(self) -> str | None:
        return self.points[len(self.injected)] if len(self.injected) < len(self.points) else None


@dataclass
class Tally:
    faults: Counter[str] = field(default_factory=Counter)
    downloads_checked: int = 0
    partial_downloads: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    monkey_errors: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stuck: dict[str, str] = field(default_factory=dict)  # job id -> why, as first seen
    stalls_reported: int = 0
    ended_by: str = "every job ended"


class Monkey:
    """Injects the faults: worker kills at planned points, API and PostgreSQL restarts."""

    def __init__(self, cluster: Cluster, api: Api, plans: list[Plan], rng: random.Random,
                 tally: Tally, restarts: dict[str, int]) -> None:
        self.cluster, self.api, self.plans, self.rng = cluster, api, plans, rng
        self.tally, self.restarts = tally, restarts
        self.replacements: list[float] = []  # times at which to start a worker
        self.stop = threading.Event()

    def active(self) -> list[Plan]:
        return [p for p in self.plans
                if not JobStatus(self.cluster.job(p.job_id).status).is_terminal()]

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.step()
            except Exception as error:  # noqa: BLE001 - e.g. our own connection during a restart
                self.tally.monkey_errors[type(error).__name__] += 1
                self.stop.wait(1)
            self.stop.wait(0.05)

    def step(self) -> None:
        now = time.monotonic()
        for due in [t for t in self.replacements if t <= now]:
            self.replacements.remove(due)
            self.cluster.start_worker()
        active = self.active()
        for plan in active:
            point = plan.next_point()
            if point is None:
                continue
            if point == BEFORE_FIRST_HEARTBEAT:
                self.strike_before_first_heartbeat(plan, now)
                continue
            victim = victim_at(self.cluster, plan.job_id, point)
            if victim is not None:
                victim.kill()
                plan.injected.append(point)
                self.tally.faults[f"worker SIGKILL: {point}"] += 1
                self.replacements.append(now + self.rng.uniform(0, 5))
        searching = [p for p in active if self.cluster.job(p.job_id).status == "searching"]
        if searching and self.restarts.get("api", 0) > 0 and self.rng.random() < 0.01:
            self.restart_api()
        if searching and self.restarts.get("postgres", 0) > 0 and self.rng.random() < 0.01:
            self.restarts["postgres"] -= 1
            down = self.rng.choice([0.0, 10.0])
            self.cluster.restart_postgres(down_seconds=down)
            self.tally.faults[f"PostgreSQL restart ({down:.0f} s down)"] += 1

    def strike_before_first_heartbeat(self, plan: Plan, now: float) -> None:
        """Hold heartbeats back a few seconds; when a trial of the job starts, kill its
        worker (or take PostgreSQL down) before the trial's first heartbeat."""
        if now < plan.next_strike:
            return
        plan.next_strike = now + STRIKE_RETRY_SECONDS
        # The run's first strike takes the database down (when it may), the others kill.
        take_database_down = self.restarts.get(DATABASE_BEFORE_HEARTBEAT, 0) > 0

        def fault(trial: UnownedTrial) -> None:
            if take_database_down:
                self.restarts[DATABASE_BEFORE_HEARTBEAT] -= 1
                self.cluster.restart_postgres(down_seconds=10.0)
            else:
                trial.process.kill()

        struck = strike_before_first_heartbeat(self.cluster, plan.job_id, fault)
        if struck is None:
            return
        plan.injected.append(BEFORE_FIRST_HEARTBEAT)
        if take_database_down:
            self.tally.faults["PostgreSQL down 10 s: before a trial's first heartbeat"] += 1
        else:
            self.tally.faults[f"worker SIGKILL: {BEFORE_FIRST_HEARTBEAT}"] += 1
            self.replacements.append(time.monotonic() + self.rng.uniform(0, 5))

    def restart_api(self) -> None:
        self.restarts["api"] -= 1
        self.api.process.kill()
        fresh = self.cluster.start_api(port=self.api.port)
        self.api.process = fresh.process
        self.tally.faults["API SIGKILL + restart"] += 1




def plan_faults(job_ids: list[str], faults: int, rng: random.Random) -> list[Plan]:
    plans = []
    for job_id in job_ids:
        count = rng.randint(1, faults)
        points = sorted(rng.sample(ORDER, count), key=ORDER.index)
        plans.append(Plan(job_id, points))
    return plans
