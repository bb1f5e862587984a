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

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.errors import ConfigurationError

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
    lease_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    stall_floor_seconds: float = Field(
        default=600.0, gt=0, description="a search with no finished trial for this long "
                                         "(or longer, see stall_trial_multiple) is stalled")
    stall_trial_multiple: float = Field(
        default=3.0, ge=1, description="the stall bound is at least this many times the "
                                       "job's longest finished trial")
    log_level: str = "INFO"

    @field_validator("database_url", "optuna_url")
    @classmethod
    def _normalise_url(cls, value: str) -> str:
        return normalise_database_url(value.strip())

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

    def ensure_directories(self) -> None:
        """Create home, data, artifact and upload folders when missing."""
        for folder in (self.home, self.data_root, self.artifact_dir, self.upload_dir):
            assert folder is not None
            folder.mkdir(parents=True, exist_ok=True)

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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings from the environment (cached; ``get_settings.cache_clear()``)."""
    return Settings()
