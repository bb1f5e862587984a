"""Optuna's storage opened by several processes at once on a fresh PostgreSQL database."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.support import REPOSITORY, create_database, drop_database

PROCESSES = 4
ROUNDS = 3
# Each process waits for the same instant, then opens the storage: without the retry
# in open_storage, the losers of Optuna's unlocked CREATE TABLE / CREATE TYPE race
# exit with "duplicate key value violates unique constraint" (seen with two workers).
OPEN_AT = """
import sys, time
from search.storage import open_storage
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
open_storage(sys.argv[1]).get_all_studies()
"""


@pytest.mark.postgres
@pytest.mark.slow
def test_processes_opening_a_fresh_storage_together_all_succeed(
        postgres_admin_url: str) -> None:
    for _ in range(ROUNDS):
        url = create_database(postgres_admin_url, prefix="topiary_optuna")
        try:
            start = time.time() + 3.0  # after every interpreter has imported Optuna
            processes = [subprocess.Popen([sys.executable, "-c", OPEN_AT, url, str(start)],
                                          cwd=REPOSITORY, stderr=subprocess.PIPE, text=True)
                         for _ in range(PROCESSES)]
            errors = [process.communicate(timeout=120)[1] for process in processes]
            failures = [error for process, error in zip(processes, errors, strict=True)
                        if process.returncode != 0]
            assert not failures, failures[0][-2000:]
        finally:
            drop_database(postgres_admin_url, url)
