from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from cli.main import app
from service.config import Settings, get_settings
from service.db import create_engine_for, session_scope
from service.logs import ROUTED_LOGGERS
from service.tenants import authenticate
from tests.support import program_environment, served_api


@pytest.fixture(autouse=True)
def logging_restored() -> Iterator[None]:
    """``serve`` and ``migrate`` point the root logger at the stderr CliRunner gives them
    (``service.logs.configure_logging``), which it closes: later tests in this process
    would log into a closed file."""
    loggers = [logging.getLogger(name) for name in ("", *ROUTED_LOGGERS)]
    saved = [(logger.handlers[:], logger.level, logger.propagate) for logger in loggers]
    yield
    for logger, (handlers, level, propagate) in zip(loggers, saved, strict=True):
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                database_url: str) -> Iterator[str]:
    monkeypatch.setenv("TOPIARY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TOPIARY_DATABASE_URL", database_url)
    get_settings.cache_clear()
    yield database_url
    get_settings.cache_clear()


def _tenant_of(url: str, key: str) -> str | None:
    engine = create_engine_for(url)
    try:
        with session_scope(engine) as session:
            identity = authenticate(session, key)
    finally:
        engine.dispose()
    return None if identity is None else identity.name


def test_keys_create_prints_a_working_key_once_and_revoke_disables_it(environment: str) -> None:
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "--tenant", "acme"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert key.startswith("tpy_") and _tenant_of(environment, key) == "acme"
    revoked = runner.invoke(app, ["keys", "revoke", key[:12]])
    assert revoked.exit_code == 0 and "revoked 1" in revoked.stdout
    assert _tenant_of(environment, key) is None
    again = runner.invoke(app, ["keys", "revoke", key])
    assert again.exit_code == 1


def _invoke_with(monkeypatch: pytest.MonkeyPatch, home: Path, command: list[str],
                 variables: dict[str, str]) -> Result:
    """``topiary COMMAND`` with ``TOPIARY_HOME`` at ``home`` and ``variables`` set."""
    monkeypatch.setenv("TOPIARY_HOME", str(home))
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(app, command)
    finally:
        get_settings.cache_clear()


def test_serve_refuses_auth_none_off_loopback(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    result = _invoke_with(monkeypatch, tmp_path, ["serve", "--host", "0.0.0.0"],
                          {"TOPIARY_AUTH": "none"})
    assert result.exit_code == 2 and "loopback" in result.output
    assert not (tmp_path / "topiary.db").exists()


@pytest.mark.slow
def test_serve_migrates_and_answers(tmp_path: Path) -> None:
    log_path = tmp_path / "serve.log"
    environment = program_environment(tmp_path, auth="none", access_log="all")
    with served_api(environment, log_path) as server:
        assert httpx.get(f"{server.base_url}/v1/jobs").json()["count"] == 0
    log = log_path.read_text()
    assert '"message": "authentication is off' in log
    assert '"route": "/v1/jobs"' in log  # one JSON access line per request


def test_serve_refuses_several_processes_on_sqlite(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    result = _invoke_with(monkeypatch, tmp_path, ["serve", "--processes", "2"], {})
    assert result.exit_code == 2
    assert "PostgreSQL" in result.output and "TOPIARY_API_PROCESSES=1" in result.output
    assert not (tmp_path / "topiary.db").exists()


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("TOPIARY_LEASE_SECONDS", "-1", "TOPIARY_LEASE_SECONDS: Input should be greater than 0"),
    ("TOPIARY_LOG_LEVEL", "verbose",
     "TOPIARY_LOG_LEVEL: Value error, a log level is one of DEBUG, INFO, WARNING, ERROR, "
     "CRITICAL"),
])
@pytest.mark.parametrize("command", [["serve"], ["migrate"], ["keys", "create", "--tenant", "a"]])
def test_a_bad_setting_is_named_without_a_traceback(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: list[str], variable: str,
        value: str, message: str) -> None:
    result = _invoke_with(monkeypatch, tmp_path, command, {variable: value})
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "topiary.db").exists()


@pytest.mark.parametrize("command", [["serve"], ["migrate"], ["keys", "create", "--tenant", "a"]])
def test_a_database_that_does_not_answer_is_one_line_without_its_password(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: list[str]) -> None:
    result = _invoke_with(monkeypatch, tmp_path, command, {
        "TOPIARY_DATABASE_URL": "postgresql+psycopg://ops:hunter2@127.0.0.1:1/x"})
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "cannot use the database: migrating postgresql+psycopg://ops:***@127.0.0.1:1/x" \
        in output and "TOPIARY_DATABASE_URL" in output, result.output
    assert "hunter2" not in result.output and "Traceback" not in result.output


def test_the_demo_names_a_bad_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    result = _invoke_with(monkeypatch, tmp_path, ["demo"], {"TOPIARY_LOG_LEVEL": "chatty"})
    assert result.exit_code == 1, result.output
    assert "demo failed: bad settings: TOPIARY_LOG_LEVEL: Value error, a log level is one of" \
        in " ".join(result.output.split()), result.output


def test_log_levels_are_named_in_any_case(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    monkeypatch.setenv("TOPIARY_LOG_LEVEL", " warning ")
    assert Settings(home=tmp_path).log_level == "WARNING"


def _histogram_count(metrics: str, route: str) -> float:
    prefix = "topiary_http_request_duration_seconds_count{"
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith(prefix) and f'route="{route}"' in line)


@pytest.mark.slow
def test_serve_processes_share_the_port_and_the_metrics(tmp_path: Path,
                                                       postgres_url: str) -> None:
    home = tmp_path / "home"
    log_path = tmp_path / "serve.log"
    environment = program_environment(home, postgres_url, auth="none")
    with served_api(environment, log_path, arguments=["--processes", "2"]) as server:
        base = server.base_url
        sent = 0
        # Requests on new connections until both processes have answered some (each
        # keeps its values in a file of its own, named by its pid).
        while len(list((home / "metrics").glob("histogram_*.db"))) < 2:
            assert sent < 2000, "one process answered every request"
            with ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(lambda _: httpx.get(f"{base}/healthz").status_code,
                                         range(40)))
            assert statuses == [200] * 40
            sent += 40
        assert httpx.get(f"{base}/v1/jobs").json()["count"] == 0
        # Any process's /metrics reports the requests of both.
        for _ in range(3):
            assert _histogram_count(httpx.get(f"{base}/metrics").text, "/healthz") == sent
    assert '"processes": 2' in log_path.read_text()
