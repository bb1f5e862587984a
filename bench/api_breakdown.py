"""Where the server CPU of a ``GET /v1/jobs/{id}`` goes: the app alone, and its parts.

    python bench/api_breakdown.py [--requests 2000] [--rounds 5]

``bench/api_load.py`` measures the whole server process (uvicorn's HTTP parsing and
event loop included). This calls the ASGI app in-process instead, with no server and no
sockets, on SQLite seeded as ``api_load`` seeds it (300 jobs of 100 tenants), and times
in CPU milliseconds per call:

* ``GET /v1/jobs/{id}`` and ``GET /healthz`` through the whole app (middleware, guard,
  routing, route), so that the server's cost minus these is uvicorn's share;
* the parts of the job read: ``_job_body`` inline (key check, read, ``JobPublic`` JSON),
  the hand-off of a no-op to a thread pool and back (what ``run_in_executor`` costs the
  loop), ``key_tenant``, one rate-limit hit, and route matching.

Medians over ``--rounds`` rounds. Writes ``bench/out/api_breakdown.md``. Never part of the
test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
OUT = Path(__file__).resolve().parent / "out"


async def _call(app: Any, path: str, key: str) -> int:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 8000),
             "headers": [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {key}".encode())]}
    status: dict[str, int] = {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status["code"] = message["status"]

    await app(scope, receive, send)
    return status["code"]


async def _cpu_ms(action: Callable[[int], Awaitable[Any]], requests: int, rounds: int) -> float:
    for number in range(min(300, requests)):
        await action(number)
    measured = []
    for _ in range(rounds):
        started = time.process_time()
        for number in range(requests):
            await action(number)
        measured.append(1000 * (time.process_time() - started) / requests)
    return statistics.median(measured)


async def measure(requests: int, rounds: int) -> list[tuple[str, float]]:
    import api_load
    from starlette.requests import Request
    from starlette.routing import Match

    from service.api.app import create_app
    from service.api.deps import key_tenant
    from service.api.ratelimit import RequestRates
    from service.api.routes.jobs import _job_body
    from service.config import get_settings

    keys, jobs = api_load._seed(os.environ["TOPIARY_DATABASE_URL"], 300, 100)
    app = create_app()
    rows = []
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))

        async def job(number: int) -> None:
            key, job_id = jobs[number % len(jobs)]
            assert await _call(app, f"/v1/jobs/{job_id}", key) == 200

        async def health(number: int) -> None:
            assert await _call(app, "/healthz", keys[0]) == 200

        rows.append(("GET /v1/jobs/{id}, whole app", await _cpu_ms(job, requests, rounds)))
        rows.append(("GET /healthz, whole app", await _cpu_ms(health, requests, rounds)))

        key, job_id = jobs[0]
        scope: dict[str, Any] = {"type": "http", "method": "GET", "path": f"/v1/jobs/{job_id}",
                                 "root_path": "", "query_string": b"", "app": app,
                                 "headers": [(b"authorization", f"Bearer {key}".encode())]}
        tenant = await key_tenant(Request({**scope, "state": {}}))
        state = app.state

        async def body(_: int) -> None:
            _job_body(state.read_engine, state.live_workers, job_id, tenant)

        rows.append(("  _job_body inline (key check, read, JSON)",
                     await _cpu_ms(body, requests, rounds)))
        pool = ThreadPoolExecutor(4)
        loop = asyncio.get_running_loop()

        async def hand_off(_: int) -> None:
            await loop.run_in_executor(pool, int)

        rows.append(("  thread-pool hand-off of a no-op",
                     await _cpu_ms(hand_off, requests, rounds)))
        pool.shutdown()

        async def tenant_of(_: int) -> None:
            await key_tenant(Request({**scope, "state": {}}))

        rows.append(("  key_tenant", await _cpu_ms(tenant_of, requests, rounds)))
        rates = RequestRates(get_settings())

        async def hit(number: int) -> None:
            await rates.hit(f"key-{number % 100}")

        rows.append(("  one rate-limit hit (memory)", await _cpu_ms(hit, requests, rounds)))

        async def route(_: int) -> None:
            for candidate in app.router.routes:
                if candidate.matches(scope)[0] == Match.FULL:
                    return

        rows.append(("  route matching", await _cpu_ms(route, requests, rounds)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="topiary-breakdown-"))
    # The same settings api_load's server gets: no limit refuses the load.
    os.environ.update({"TOPIARY_HOME": str(home),
                       "TOPIARY_DATABASE_URL": f"sqlite:///{home / 'topiary.db'}",
                       "TOPIARY_RATE_LIMIT": "1000000/second",
                       "TOPIARY_MAX_JOBS_PER_DAY": str(10**9),
                       "TOPIARY_MAX_CONCURRENT_JOBS_PER_TENANT": str(10**9)})
    rows = asyncio.run(measure(args.requests, args.rounds))
    lines = ["| what | CPU ms per call (median of rounds) |", "|---|---|",
             *(f"| {label} | {value:.3f} |" for label, value in rows)]
    print("\n".join(lines))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "api_breakdown.md").write_text(
        "## bench/api_breakdown.py: the ASGI app alone, SQLite, one process\n\n"
        + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
