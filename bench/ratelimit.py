"""What one request's rate-limit check costs the event loop, against the number of API keys
counted in the current window: `limits`' own in-process ``MemoryStorage`` against
Topiary's ``SweptMemoryStorage`` (the same storage, sweeping expired keys at most once a
second), side by side in one run.

    .venv/bin/python bench/ratelimit.py [--keys 10,100,1000,10000] [--hits 2000] [--rounds 5]

Each round fills a fresh ``RequestRates`` (the API's default limits) with ``keys`` keys,
then times ``hits`` checks cycling over them, yielding to the event loop after each as
the server does between requests (the sweep runs as a task there). Process CPU time per
check, median over the rounds, the two storages alternating. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from limits.aio.storage import MemoryStorage  # noqa: E402
from limits.aio.strategies import FixedWindowRateLimiter  # noqa: E402

from service.api.ratelimit import RequestRates, SweptMemoryStorage  # noqa: E402
from service.config import Settings  # noqa: E402

STORAGES = {"limits MemoryStorage": MemoryStorage, "SweptMemoryStorage": SweptMemoryStorage}


async def microseconds_per_check(storage: type[MemoryStorage], keys: int, hits: int) -> float:
    rates = RequestRates(Settings())
    # The bench picks the storage; the API always takes RequestRates' own.
    rates._limiter, rates._loop = FixedWindowRateLimiter(storage()), asyncio.get_running_loop()
    for number in range(keys):
        await rates.hit(f"key-{number}")
    await asyncio.sleep(0)
    started = time.process_time()
    for number in range(hits):
        await rates.hit(f"key-{number % keys}")
        await asyncio.sleep(0)
    return (time.process_time() - started) / hits * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", default="10,100,1000,10000")
    parser.add_argument("--hits", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"Rate-limit check, us of CPU per request (median of {args.rounds} rounds, "
          f"{args.hits} checks each; default limits {Settings().rate_limit})\n")
    print("| keys in the window | " + " | ".join(STORAGES) + " | ratio |")
    print("|---|" + "---|" * (len(STORAGES) + 1))
    for keys in (int(value) for value in args.keys.split(",")):
        times: dict[str, list[float]] = {name: [] for name in STORAGES}
        for _round in range(args.rounds):
            for name, storage in STORAGES.items():
                times[name].append(asyncio.run(microseconds_per_check(storage, keys, args.hits)))
        medians = [statistics.median(values) for values in times.values()]
        print(f"| {keys} | " + " | ".join(f"{value:.1f}" for value in medians)
              + f" | {medians[1] / medians[0]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
