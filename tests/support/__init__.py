"""The test harness, one of each: a free port, the PostgreSQL probe, throwaway databases
copied from a migrated template, and the launcher of our programs.

A test that stops PostgreSQL stops a server of its own (:func:`private_postgres`),
never the shared one. The tests use the harness through fixtures
(:mod:`tests.support.fixtures`, registered by ``tests/conftest.py``) and these
functions; the reliability tier and ``bench/`` also use :mod:`tests.support.cluster`
(real processes and their faults) and :mod:`tests.support.invariants` (what a job
must be whatever was killed). The arrow is one way: ``bench`` imports
``tests.support``; nothing here imports ``bench`` or a test module. Processes are
started by :mod:`cli.processes`, the code the demo starts its own children with.
"""

from cli.processes import ChildExited, ChildProcess, ChildProcesses, free_port, start_child
from tests.support._launch import (
    REPOSITORY,
    ServedApi,
    answers_readyz,
    program_environment,
    served_api,
    start_api,
    start_worker,
    topiary_command,
    worker_command,
)
from tests.support._postgres import (
    admin_url,
    create_database,
    drop_database,
    postgres_answers,
    postgres_unavailable,
    throwaway_database,
)
from tests.support._private_postgres import (
    PrivatePostgres,
    private_postgres,
    private_postgres_unavailable,
)
from tests.support._templates import (
    copy_postgres,
    copy_sqlite,
    migrated_postgres_template,
    migrated_sqlite_template,
)
from tests.support._waiting import wait_for
from tests.support.specs import chaos_spec, spec_json, tiny_spec

__all__ = [
    "REPOSITORY",
    "ChildExited",
    "ChildProcess",
    "ChildProcesses",
    "PrivatePostgres",
    "ServedApi",
    "admin_url",
    "answers_readyz",
    "chaos_spec",
    "copy_postgres",
    "copy_sqlite",
    "create_database",
    "drop_database",
    "free_port",
    "migrated_postgres_template",
    "migrated_sqlite_template",
    "postgres_answers",
    "postgres_unavailable",
    "private_postgres",
    "private_postgres_unavailable",
    "program_environment",
    "served_api",
    "spec_json",
    "start_api",
    "start_child",
    "start_worker",
    "throwaway_database",
    "tiny_spec",
    "topiary_command",
    "wait_for",
    "worker_command",
]
