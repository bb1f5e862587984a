"""The service's settings: one pydantic-settings class read from ``TOPIARY_*``.

Everything lives under ``TOPIARY_HOME`` (default ``./.topiary``) unless set:
``topiary.db`` (our tables), ``optuna.db`` (Optuna's, kept apart on purpose, see
DESIGN.md "Databases"), ``data/``, ``artifacts/`` and ``uploads/``. No secret
has a default.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.errors import ConfigurationError

#: The levels ``TOPIARY_LOG_LEVEL`` may name (``logging``'s own, in any case).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_DRIVERLESS_POSTGRES = ("postgres://", "postgresql://")


def normalise_database_url(url: str) -> str:
    """Give PostgreSQL URLs the psycopg 3 driver (``postgres://`` as Heroku-style URLs spell it).

    Args:
        url: any SQLAlchemy URL.

    Returns:
        The same URL, with ``postgresql+psycopg://`` where no driver was named.
    """
    for prefix in _DRIVERLESS_POSTGRES:
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Every knob of the API and the workers; each is the env var ``TOPIARY_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="TOPIARY_", extra="ignore")

    home: Path = Field(default=Path(".topiary"), description="root of the default locations")
    database_url: str = Field(default="", description="our tables; default sqlite in home")
    optuna_url: str = Field(default="", description="Optuna's storage; a separate database")
    data_root: Path | None = Field(default=None, description="dataset roots resolve inside it")
    artifact_dir: Path | None = None
    upload_dir: Path | None = None
    auth: Literal["key", "none"] = "key"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_processes: int = Field(default=1, ge=1, le=64,
                               description="uvicorn processes serving the API (PostgreSQL only "
                                           "above 1)")
    max_upload_mb: float = Field(default=512.0, gt=0)
    max_concurrent_jobs_per_tenant: int = Field(default=8, ge=1)
    max_jobs_per_day: int = Field(default=200, ge=1,
                                  description="jobs a tenant may submit in 24 hours")
    upload_quota_mb: float = Field(default=4096.0, gt=0,
                                   description="weights a tenant may keep stored, in MiB")
    rate_limit: str = Field(
        default="20/second;600/minute",
        description="requests per API key, in the `limits` notation; several limits "
                    "separated by ';' all apply")
    rate_limit_storage: str = Field(
        default="", description="where the rate-limit counters live, a `limits` storage URI "
                                "all API processes reach (redis://host:6379/0); empty: in "
                                "each process's memory")
    max_streams_per_key: int = Field(default=4, ge=1,
                                     description="open event streams per API key and process")
    header_timeout_seconds: float = Field(
        default=10.0, gt=0, description="a request's headers must arrive within this time")
    body_idle_timeout_seconds: float = Field(
        default=30.0, gt=0, description="longest pause while a request body is sent")
    keep_alive_seconds: int = Field(default=5, ge=1,
                                    description="an idle keep-alive connection is closed after")
    docs: Literal["off", "loopback", "public"] = Field(
        default="loopback", description="/docs and /openapi.json: off, only to clients on this "
                                        "machine, or to anyone (/openapi.json also answers "
                                        "any valid key)")
    metrics: Literal["off", "key", "public"] = Field(
        default="key", description="/metrics: off, for any valid API key, or to anyone")
    access_log: Literal["errors", "all"] = Field(
        default="errors", description="log a line per request, or only for failed (4xx, 5xx) "
                                      "and slow ones (the reverse proxy logs them all)")
    lease_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    heartbeat_seconds: int = Field(
        default=10, ge=1, le=3600,
        description="seconds between a running trial's heartbeats: a trial whose heartbeats "
                    "stop for twice this (its worker died) is failed and run again")
    stall_floor_seconds: float = Field(
        default=600.0, gt=0, description="a search with no finished trial for this long "
                                         "(or longer, see stall_trial_multiple) is stalled")
    stall_trial_multiple: float = Field(
        default=3.0, ge=1, description="the stall bound is at least this many times the "
                                       "job's longest finished trial")
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING, ERROR or "
                                                         "CRITICAL, in any case")

    @field_validator("database_url", "optuna_url")
    @classmethod
    def _normalise_url(cls, value: str) -> str:
        return normalise_database_url(value.strip())

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"a log level is one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("rate_limit")
    @classmethod
    def _parse_rate_limit(cls, value: str) -> str:
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError as error:
            raise ValueError(f"{value!r} is not a rate such as "
                             "'20/second;600/minute'") from error
        return value

    @model_validator(mode="after")
    def _fill_locations(self) -> Settings:
        self.home = self.home.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'topiary.db'}"
        if not self.optuna_url:
            self.optuna_url = f"sqlite:///{self.home / 'optuna.db'}"
        self.data_root = (self.data_root or self.home / "data").expanduser().resolve()
        self.artifact_dir = (self.artifact_dir or self.home / "artifacts").expanduser().resolve()
        self.upload_dir = (self.upload_dir or self.home / "uploads").expanduser().resolve()
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def upload_quota_bytes(self) -> int:
        return int(self.upload_quota_mb * 1024 * 1024)

    def ensure_directories(self) -> None:
        """Create home, data, artifact and upload folders when missing, readable by their
        owner only (0700); folders that exist keep their mode."""
        for folder in (self.home, self.data_root, self.artifact_dir, self.upload_dir):
            assert folder is not None
            private_folder(folder)

    def check_auth_binding(self) -> None:
        """Refuse ``auth=none`` unless the server only listens on loopback.

        Raises:
            ConfigurationError: auth is off and ``host`` accepts remote connections.
        """
        if self.auth == "none" and not is_loopback(self.host):
            raise ConfigurationError(
                f"TOPIARY_AUTH=none lets anyone act as the default tenant, so it is only "
                f"allowed on a loopback address, not {self.host!r}; bind to 127.0.0.1 or "
                "set TOPIARY_AUTH=key and create keys with `topiary keys create`")

    def check_api_processes(self) -> None:
        """Refuse several API processes on SQLite.

        Raises:
            ConfigurationError: ``api_processes`` > 1 with a SQLite database.
        """
        if self.api_processes > 1 and self.database_url.startswith("sqlite"):
            raise ConfigurationError(
                f"{self.api_processes} API processes on SQLite would queue each other's writes "
                "behind SQLite's busy timeout (up to 100 ms sleeps per try); serve one process "
                "(TOPIARY_API_PROCESSES=1) or move TOPIARY_DATABASE_URL to PostgreSQL")


def private_folder(folder: Path) -> Path:
    """``folder`` and its missing parents, created 0700 (whatever the umask)."""
    missing = [parent for parent in (folder, *folder.parents) if not parent.exists()]
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for created in missing:
        created.chmod(0o700)
    return folder


def settings_problems(error: ValidationError) -> str:
    """What is wrong with the settings, by the variable that sets each
    (``TOPIARY_LEASE_SECONDS: Input should be greater than 0``); values are left out, as
    a database URL may hold a password."""
    problems = []
    for problem in error.errors():
        field = "_".join(map(str, problem["loc"])).upper()
        problems.append(f"TOPIARY_{field}: {problem['msg']}" if field else problem["msg"])
    return "; ".join(problems)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings from the environment (cached; ``get_settings.cache_clear()``)."""
    return Settings()
