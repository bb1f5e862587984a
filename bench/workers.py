"""Workers benchmark: search throughput with 1 and 2 workers, and the service's overhead.

(1) The same job (ResNet-20 on 16x16 digits, PostgreSQL for our tables and
Optuna's) with one and with two worker processes (``python -m workers
--threads 1``, one torch thread each): finished trials per minute during the
SEARCHING phase only (first trial start to last trial end, from the Optuna
study), their ratio (goal >= 1.8), and where a worker's time goes per trial.
(2) The same job submitted through the REST API (a real uvicorn server, one
real worker, POST to SUCCEEDED) against a plain script running the same code
(``models`` + ``search``: baseline, scores, warm start, ``run_trials``,
final fine-tune, exports) with no service around it (goal: ratio <= 1.05).

Every configuration runs ``--repeats`` times, interleaved, and medians are
reported. The CPU the workers got and what the rest of the machine used in
the same window are read from ``/proc``: on a shared machine a 2-worker
ratio below 2 is often the cores, not the code, so throughput per core the
workers actually got is shown too. Every process started here runs in its
own session (Linux autogroup scheduling shares CPU between sessions first).

    .venv/bin/python bench/workers.py [--trials 20] [--repeats 2] [--parts scaling,overhead]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from optuna.trial import FrozenTrial  # noqa: E402

from bench._common import (  # noqa: E402
    Watch,
    WorkerProcess,
    api_server,
    deployment,
    load_average,
    median,
    postgres_answers,
    postgres_database,
    process_cpu_seconds,
    retried,
    study_trials,
    wait_until_terminal,
)
from bench._worker_profile import profile_table  # noqa: E402
from bench._worker_report import contention_line, overhead_lines, scaling_lines  # noqa: E402
from core.spec import JobSpec  # noqa: E402
from core.trial import TrialRecord  # noqa: E402
from search.budget import FINISHED, is_surplus  # noqa: E402
from service.db import create_engine_for  # noqa: E402
from service.jobs import count_live_workers, get_job, list_events, submit_job  # noqa: E402
from service.tenants import create_api_key, get_or_create_tenant  # noqa: E402

T = TypeVar("T")
SPEC: dict[str, Any] = {
    "name": "bench-workers",
    "model": {"arch": "cifar_resnet20"},
    "dataset": {"name": "digits", "image_size": 16},
    # A FLOPs limit keeps feasibility independent of measured (noisy) latency,
    # so the plain script and the service run the same trials.
    "objective": {"mode": "constrained", "constraints": {"max_flops_ratio": 0.5}},
    "latency": {"device": "cpu"},
    "search": {"n_trials": 20, "warm_start": ["pls"], "round_to": 4},
    "fine_tune": {"trial_epochs": 2, "final_epochs": 3, "baseline_epochs": 3},
    "seed": 0,
}


def plans_of(trials: list[FrozenTrial]) -> list[str]:
    """The finished, counted trials' parameters in trial order (to compare two runs)."""
    return [json.dumps(t.params, sort_keys=True) for t in sorted(trials, key=lambda t: t.number)
            if t.state in FINISHED and not is_surplus(t)]


# ---------------------------------------------------------------- (1) scaling


@dataclass
class SearchStats:
    """The SEARCHING phase of one job, from its study's trial datetimes."""

    finished: int
    fine_tuned: int
    duplicates: int
    surplus: int
    failed: int
    seconds: float
    start: float
    end: float
    by_worker: list[int]
    trial_seconds: float
    fine_tune_seconds: float
    gap_seconds: float
    mean_macs: float

    @property
    def per_minute(self) -> float:
        return self.finished / self.seconds * 60

    @classmethod
    def of(cls, trials: list[FrozenTrial]) -> SearchStats:
        counted = [t for t in trials if not is_surplus(t)]
        finished = [t for t in counted if t.state in FINISHED and t.datetime_complete]
        records = [TrialRecord.from_trial(t) for t in finished]
        start = min(t.datetime_start.timestamp() for t in counted if t.datetime_start)
        end = max(t.datetime_complete.timestamp() for t in finished)
        workers: dict[str, list[FrozenTrial]] = {}
        for trial, record in zip(finished, records, strict=True):
            workers.setdefault(record.worker or "?", []).append(trial)
        gaps = []
        for own in workers.values():
            own.sort(key=lambda t: t.datetime_start)
            gaps += [(b.datetime_start - a.datetime_complete).total_seconds()
                     for a, b in zip(own, own[1:], strict=False)]
        return cls(
            finished=len(finished),
            fine_tuned=sum(1 for record in records if record.fine_tune_seconds),
            duplicates=len(finished) - len({json.dumps(t.params, sort_keys=True)
                                            for t in finished}),
            surplus=sum(1 for t in trials if is_surplus(t)),
            failed=sum(1 for t in counted if t.state.name == "FAIL"), seconds=end - start,
            start=start, end=end, by_worker=sorted((len(v) for v in workers.values()),
                                                   reverse=True),
            trial_seconds=median((t.datetime_complete - t.datetime_start).total_seconds()
                                 for t in finished),
            fine_tune_seconds=median(record.fine_tune_seconds or 0.0 for record in records),
            gap_seconds=median(gaps),
            mean_macs=sum(record.flops or 0.0 for record in records) / len(finished))


@dataclass
class ScalingRun:
    workers: int
    stats: SearchStats
    worker_cores: float
    other_cores: float
    status: str

    @property
    def cpu_per_trial(self) -> float:
        """The workers' CPU seconds in the search window per finished trial."""
        return self.worker_cores * self.stats.seconds / self.stats.finished


def scaling_run(spec: JobSpec, workers: int, profile: Path | None = None) -> ScalingRun:
    """One job on a fresh deployment with ``workers`` worker processes started together."""
    with deployment() as target:
        engine = create_engine_for(target.database_url)
        tenant = get_or_create_tenant(engine, "bench")
        processes = [WorkerProcess(target, f"worker{i}", profile if i == 0 else None)
                     for i in range(workers)]
        watch = Watch([process.process.pid for process in processes])
        try:
            job = submit_job(engine, tenant.id, spec, data_root=target.home / "data",
                             max_active_jobs=100)
            status = wait_until_terminal(lambda: get_job(engine, job.id).status, processes,
                                         watch)
        finally:
            for process in processes:
                process.stop()
        row = get_job(engine, job.id)
        engine.dispose()
        if status != "succeeded":
            raise RuntimeError(f"job {status}: {row.error_code}: {row.error_message}")
        trials = study_trials(target.optuna_url, row.study_name)
    stats = SearchStats.of(trials)
    return ScalingRun(workers, stats, *watch.cores(stats.start, stats.end), status)


# ---------------------------------------------------------------- (2) overhead


@dataclass
class JobTiming:
    label: str
    phases: dict[str, float]
    plans: list[str]
    status: str = "succeeded"


def _request(port: int, method: str, path: str, key: str, body: Any = None) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request(method, path, body=json.dumps(body) if body is not None else None,
                       headers={"Authorization": f"Bearer {key}",
                                "Content-Type": "application/json"})
    response = connection.getresponse()
    payload = json.loads(response.read())
    connection.close()
    if response.status >= 400:
        raise RuntimeError(f"{method} {path}: {response.status} {payload}")
    return payload


def service_run(spec: JobSpec) -> JobTiming:
    """POST the job to a real API server with one idle worker; time until SUCCEEDED.

    The end is the ``succeeded`` status event's time (database clock, same
    machine), so how often this client polls does not change the result; it
    polls once a second to stay out of the way.
    """
    with deployment() as target:
        engine = create_engine_for(target.database_url)
        key = create_api_key(engine, "bench").key
        with api_server(target.environment(), target.home / "server.log") as (port, server):
            worker = WorkerProcess(target, "worker0")
            try:
                while count_live_workers(engine, within_seconds=60) < 1:
                    time.sleep(0.2)
                time.sleep(2.0)  # registered; let it reach its idle claim loop
                cpu_before = (worker.cpu_seconds() or 0.0, process_cpu_seconds(server) or 0.0)
                watch = Watch([worker.process.pid, server])
                posted = time.time()
                job_id = _request(port, "POST", "/v1/jobs", key, spec.model_dump())["id"]
                status = wait_until_terminal(
                    lambda: _request(port, "GET", f"/v1/jobs/{job_id}", key)["status"],
                    [worker], watch, period=1.0)
                cpu = ((worker.cpu_seconds() or 0.0) - cpu_before[0],
                       (process_cpu_seconds(server) or 0.0) - cpu_before[1])
            finally:
                worker.stop()
        job = get_job(engine, job_id)
        if status != "succeeded":
            raise RuntimeError(f"job {status}: {job.error_code}: {job.error_message}")
        moved = {e.data["status"]: _utc(e.created_at) for e in list_events(engine, job_id)
                 if e.kind == "status" and e.data}
        trials = study_trials(target.optuna_url, job.study_name)
        engine.dispose()

    def between(first: str, second: str) -> float:
        return (moved[second] - moved[first]).total_seconds()

    phases = {"queued": moved["preparing"].timestamp() - posted,
              "prepare": between("preparing", "searching"),
              "search": between("searching", "finalizing"),
              "finalize": between("finalizing", "succeeded"),
              "total": moved["succeeded"].timestamp() - posted,
              "cpu": cpu[0], "api_cpu": cpu[1], "other_cores": watch.cores()[1]}
    return JobTiming("API + worker", phases, plans_of(trials), status)


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def plain_run(spec: JobSpec) -> JobTiming:
    """The plain script (``bench/_plain_job.py``) in its own process and Optuna database."""
    with tempfile.TemporaryDirectory(prefix="topiary-plain-") as folder, \
            postgres_database("topiary_bplain") as optuna_url:
        spec_path, result_path = Path(folder) / "spec.json", Path(folder) / "result.json"
        spec_path.write_text(spec.model_dump_json())
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        script = subprocess.Popen([sys.executable, str(REPOSITORY / "bench" / "_plain_job.py"),
                                   str(spec_path), folder, optuna_url, str(result_path)],
                                  cwd=REPOSITORY, env=environment, start_new_session=True)
        watch = Watch([script.pid])
        while script.poll() is None:
            watch.sample()
            time.sleep(1.0)
        if script.returncode != 0:
            raise RuntimeError(f"the plain script exited with {script.returncode}")
        result = json.loads(result_path.read_text())
        trials = study_trials(optuna_url, "plain")
    return JobTiming("plain script", {**result, "other_cores": watch.cores()[1]},
                     plans_of(trials))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="n_trials of the job")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration")
    parser.add_argument("--parts", default="scaling,overhead")
    parser.add_argument("--profile", action="store_true",
                        help="also run one 1-worker job under cProfile and show its trials")
    options = parser.parse_args()
    if not postgres_answers():
        sys.exit("this benchmark needs PostgreSQL (TOPIARY_TEST_POSTGRES_URL)")
    spec = JobSpec.model_validate({**SPEC, "search": {**SPEC["search"],
                                                      "n_trials": options.trials}})
    parts = options.parts.split(",")
    before = load_average()
    scaling: list[ScalingRun] = []
    overhead: list[JobTiming] = []
    failed_attempts = 0

    def attempt(action: Callable[[], T], what: str) -> T:
        nonlocal failed_attempts
        result, failures = retried(action, what)
        failed_attempts += failures
        return result

    for repeat in range(options.repeats):
        if "scaling" in parts:
            scaling += [attempt(lambda n=n: scaling_run(spec, n), f"{n}-worker run {repeat}")
                        for n in (1, 2)]
        if "overhead" in parts:
            overhead += [attempt(lambda: plain_run(spec), f"plain run {repeat}"),
                         attempt(lambda: service_run(spec), f"service run {repeat}")]
    profile: list[str] = []
    if options.profile:
        with tempfile.TemporaryDirectory() as folder:
            dump = Path(folder) / "worker.prof"
            run = attempt(lambda: scaling_run(spec, 1, profile=dump), "profiled run")
            profile = profile_table(dump, run.stats.finished)
    after = load_average()

    print(f"Workers benchmark: {spec.model.arch} on {spec.dataset.name} "
          f"{spec.image_size()}x{spec.image_size()}, {spec.search.n_trials} trials of "
          f"{spec.fine_tune.trial_epochs} fine-tune epochs, PostgreSQL, {options.repeats} runs "
          f"each; {os.cpu_count()} CPU cores; 1 torch thread per worker")
    print(f"load average (1, 5, 15 min) before: {before}; after: {after}")
    if failed_attempts:
        print(f"{failed_attempts} run(s) failed and were run again (PostgreSQL restarted "
              "under them by other tests on this machine)")
    if scaling:
        print(contention_line("during the searches", [r.other_cores for r in scaling]))
        print("\n(1) SEARCHING phase only: 1 vs 2 workers (tuned: trials that were "
              "fine-tuned (feasible); dup: repeated plans; trial s, fine-tune s, gap s: medians "
              "per trial; gap: a worker's time between its trials; cores: CPU seconds per "
              "second of the search window)")
        print("\n".join(scaling_lines(scaling)))
    if overhead:
        print("\n(2) service overhead: POST /v1/jobs to SUCCEEDED through uvicorn + 1 worker, "
              "against a plain script running the same code in one process")
        print("\n".join(overhead_lines(overhead)))
    if profile:
        print("\nwhere a worker's trial time goes (cProfile inflates Python-heavy rows):")
        print("\n".join(profile))


if __name__ == "__main__":
    main()
