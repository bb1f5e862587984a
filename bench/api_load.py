"""Load test of the REST API: p50 / p99 latency and throughput on SQLite and PostgreSQL.

Starts the real server (``python -m cli.main serve``, uvicorn on loopback) in a
subprocess for each backend (on PostgreSQL once per ``--processes`` count), seeds a
few hundred jobs of 100 tenants (submissions rotate over their keys: the tenant row
lock and the active-job count are per tenant, as with many users), then measures
``GET /v1/jobs/{id}``, ``POST /v1/jobs`` and ``GET /healthz`` three ways: closed loop
(N clients sending back to back: the throughput ceiling), paced (a fixed request
rate: latency at that load, measured from each request's scheduled time so a stall
counts) and sequential (one client, one request at a time: the server CPU one
request costs, with no queueing).
The load generator runs on the same machine and competes for its cores, so
every row also shows the CPU milliseconds one request cost the server process,
PostgreSQL's processes and the load generator (from ``/proc``): on a small
machine their sum over the cores bounds the throughput, whatever the code waits on.

    .venv/bin/python bench/api_load.py [--duration 5] [--rate 200] [--jobs 300] [--processes 1,2]
        [--endpoints GET,POST,HEALTHZ] [--modes closed,paced,sequential]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from bench._common import (  # noqa: E402
    POSTGRES_ADMIN_URL,
    api_server,
    postgres_answers,
    postgres_database,
    process_cpu_seconds,
)
from core.spec import JobSpec  # noqa: E402
from service.db import create_engine_for, migrate, session_scope  # noqa: E402
from service.jobs import submit_job  # noqa: E402
from service.tenants import create_api_key  # noqa: E402
from tests.support import program_environment  # noqa: E402

SPEC = {"name": "bench", "model": {"arch": "cifar_resnet20", "num_classes": 10},
        "dataset": {"name": "digits", "image_size": 16},
        "objective": {"mode": "constrained", "constraints": {"max_latency_ratio": 0.5}},
        "search": {"n_trials": 20}}


@dataclass
class Result:
    backend: str
    processes: int
    endpoint: str
    mode: str
    latencies: list[float]
    errors: int
    seconds: float
    cpu_ms: dict[str, float]  # CPU ms per request: server, postgres, generator

    def row(self) -> str:
        ordered = sorted(self.latencies)
        p50 = statistics.median(ordered) * 1000
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
        rate = len(ordered) / self.seconds
        return (f"| {self.backend:<10} | {self.processes:>5} | {self.endpoint:<17} | "
                f"{self.mode:<14} | "
                f"{len(ordered):>6} | {rate:>7.0f} | {p50:>6.1f} | {p99:>6.1f} | "
                f"{self.errors:>4} | {self.cpu_ms['server']:>6.2f} | "
                f"{self.cpu_ms['postgres']:>8.2f} | {self.cpu_ms['generator']:>9.2f} | "
                f"{self.ceiling():>7.0f} |")

    def ceiling(self) -> float:
        """Requests per second at which the machine's cores would all be busy."""
        total_ms = sum(max(0.0, value) for value in self.cpu_ms.values())
        return (os.cpu_count() or 1) * 1000 / total_ms if total_ms else float("inf")


@contextmanager
def _database(backend: str, home: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{home / 'topiary.db'}"
        return
    with postgres_database("topiary_bench") as url:
        yield url


def _seed(url: str, count: int, tenants: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Keys of ``tenants`` tenants and ``count`` (key, job id) pairs spread over them."""
    migrate(url)
    engine = create_engine_for(url)
    keys = [create_api_key(engine, f"bench-{index}") for index in range(tenants)]
    spec = JobSpec.model_validate(SPEC)
    jobs = []
    with session_scope(engine) as session:
        for index in range(count):
            key = keys[index % tenants]
            job = submit_job(session, key.tenant.id, spec, data_root=Path("/nonexistent"),
                             max_active_jobs=10**9)
            jobs.append((key.key, job.id))
    engine.dispose()
    return [key.key for key in keys], jobs


def _cpu_seconds(pids: list[int]) -> dict[int, float]:
    """CPU seconds so far of each process (0 for one already gone)."""
    return {pid: process_cpu_seconds(pid) or 0.0 for pid in pids}


def _postgres_pids() -> list[int]:
    """Every process of the ``postgres`` user (the server and its backends)."""
    try:
        return [int(pid) for pid in subprocess.run(
            ["pgrep", "-u", "postgres"], capture_output=True, text=True,
            check=False).stdout.split()]
    except OSError:
        return []


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (uvicorn's supervisor and its worker processes)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True,
                              check=False).stdout.split()
    return [pid, *(descendant for child in children for descendant in _process_tree(int(child)))]


def _cpu_now(server_pid: int) -> dict[str, dict[int, float]]:
    """CPU seconds so far of each process of the server, PostgreSQL and the generator."""
    times = os.times()
    return {"server": _cpu_seconds(_process_tree(server_pid)),
            "postgres": _cpu_seconds(_postgres_pids()),
            "generator": {os.getpid(): times.user + times.system}}


def _cpu_ms_per_request(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]],
                        requests: int) -> dict[str, float]:
    """CPU ms per request of each party, summed per process: a process that started in
    between counts from zero, one that ended in between (an autovacuum worker) drops out
    instead of subtracting its whole life's CPU."""
    return {name: 1000 * sum(seconds - before[name].get(pid, 0.0)
                             for pid, seconds in processes.items()) / max(1, requests)
            for name, processes in after.items()}


def _server(url: str, home: Path, processes: int = 1) -> AbstractContextManager[tuple[int, int]]:
    # The load is a few hundred tenants' polls at up to a few thousand requests a second:
    # past the per-key rate limit (20/s by default) and the daily job quota, whose 429s
    # would cost less than the requests measured. The limiter still counts every request.
    environment = program_environment(home, url, max_concurrent_jobs_per_tenant=10**9,
                                      rate_limit="1000000/second", max_jobs_per_day=10**9)
    return api_server(environment, home / "server.log", arguments=["--processes",
                                                                   str(processes)])


Request = Callable[[http.client.HTTPConnection, int], int]
LABELS = {"GET": "GET /v1/jobs/{id}", "POST": "POST /v1/jobs", "HEALTHZ": "GET /healthz"}


def _requester(endpoint: str, keys: list[str], jobs: list[tuple[str, str]]) -> Request:
    body = json.dumps(SPEC)

    def headers(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def send(connection: http.client.HTTPConnection, index: int) -> int:
        if endpoint == "GET":
            key, job_id = jobs[index % len(jobs)]
            connection.request("GET", f"/v1/jobs/{job_id}", headers=headers(key))
        elif endpoint == "HEALTHZ":
            connection.request("GET", "/healthz")
        else:
            connection.request("POST", "/v1/jobs", body=body,
                               headers=headers(keys[index % len(keys)]))
        response = connection.getresponse()
        response.read()
        return response.status

    return send


def _run(port: int, send: Request, *, clients: int, duration: float,
         rate: float | None) -> tuple[list[float], int, float]:
    """Latencies (s), error count and wall time; paced when ``rate`` is given."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(10**9))
    start = time.perf_counter() + 0.2
    stop = start + duration

    def client() -> None:
        nonlocal errors
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                index = next(counter)
            scheduled = start + index / rate if rate else max(time.perf_counter(), start)
            if scheduled >= stop:
                break
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            status = send(connection, index)
            elapsed = time.perf_counter() - scheduled
            with lock:
                latencies.append(elapsed)
                errors += status >= 400
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rate", type=float, default=200.0, help="paced requests per second")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients")
    parser.add_argument("--jobs", type=int, default=300, help="jobs seeded before measuring")
    parser.add_argument("--tenants", type=int, default=100,
                        help="tenants (API keys) the jobs and submissions are spread over")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--processes", default="1,2",
                        help="API processes to measure on PostgreSQL (SQLite serves one)")
    parser.add_argument("--endpoints", default="GET,POST,HEALTHZ",
                        help="of GET (/v1/jobs/{id}), POST (/v1/jobs), HEALTHZ (/healthz)")
    parser.add_argument("--modes", default="closed,paced,sequential",
                        help="of closed (closed loop), paced (--rate), sequential (1 client)")
    options = parser.parse_args()

    results: list[Result] = []
    runs = [(backend, processes) for backend in options.backends.split(",")
            for processes in ([1] if backend == "sqlite" else
                              [int(count) for count in options.processes.split(",")])]
    for backend, processes in runs:
        if backend == "postgresql" and not postgres_answers():
            print(f"skipping postgresql: no server at {POSTGRES_ADMIN_URL}", file=sys.stderr)
            continue
        with tempfile.TemporaryDirectory() as folder:
            home = Path(folder)
            with _database(backend, home) as url:
                keys, jobs = _seed(url, options.jobs, options.tenants)
                with _server(url, home, processes) as (port, pid):
                    for endpoint in options.endpoints.split(","):
                        label = LABELS[endpoint]
                        send = _requester(endpoint, keys, jobs)
                        _run(port, send, clients=2, duration=1.0, rate=None)  # warm-up
                        modes = {"closed": (f"closed c={options.clients}", options.clients,
                                            None),
                                 "paced": (f"paced {options.rate:g}/s", 16, options.rate),
                                 "sequential": ("sequential c=1", 1, None)}
                        for mode, clients, rate in (modes[name]
                                                    for name in options.modes.split(",")):
                            before = _cpu_now(pid)
                            latencies, errors, seconds = _run(
                                port, send, clients=clients, duration=options.duration,
                                rate=rate)
                            after = _cpu_now(pid)
                            cpu_ms = _cpu_ms_per_request(before, after, len(latencies))
                            results.append(Result(backend, processes, label, mode,
                                                  latencies, errors, seconds, cpu_ms))
    print(f"API load, {options.jobs}+ jobs of {options.tenants} tenants in the database, "
          f"{options.duration:g} s per row, "
          f"{os.cpu_count()} CPU cores shared by server and load generator")
    print("| backend    | procs | endpoint          | mode           | reqs   | req/s   | "
          "p50 ms | p99 ms | errs | server | postgres | generator | ceiling |")
    print("|------------|-------|-------------------|----------------|--------|---------|"
          "--------|--------|------|--------|----------|-----------|---------|")
    for result in results:
        print(result.row())
    print("procs: API processes (topiary serve --processes); server / postgres / generator: CPU ms "
          "one request cost each (server: every API process; postgres: every process of the "
          "postgres user);\nceiling: req/s at which those costs would fill all "
          f"{os.cpu_count()} cores")


if __name__ == "__main__":
    main()
