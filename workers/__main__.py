"""``python -m workers [--device auto] [--threads N] [--exit-when-idle]`` (``topiary-worker``)."""

from __future__ import annotations

import argparse
import os
import sys


def main() -> None:
    """Parse the worker's options and run it until it is stopped."""
    parser = argparse.ArgumentParser(prog="topiary-worker", description="a Topiary worker")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--exit-when-idle", action="store_true",
                        help="stop when no job is left")
    arguments = parser.parse_args()
    os.umask(0o077)  # checkpoints and caches it writes are its user's alone
    from workers.worker import main as run_worker

    sys.exit(run_worker(arguments.device, arguments.threads, arguments.exit_when_idle))


if __name__ == "__main__":
    main()
