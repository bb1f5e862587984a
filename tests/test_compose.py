"""docker-compose.yml and Dockerfile, checked without a Docker engine.

The compose file is parsed and its wiring checked: the API and the workers point
at the postgres service (our database and Optuna's, apart), migrations run once
before the API and the workers, the files the API and the workers exchange sit on
the same named volumes, the worker reserves a GPU and can be scaled. The
Dockerfile must install the project with pyproject.toml's pins and nothing else.
Where a Docker engine with Compose exists, ``docker compose config`` runs too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from service.config import Settings

ROOT = Path(__file__).parents[1]
TOPIARY_SERVICES = ("migrate", "api", "worker")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def substituted(value: str) -> str:
    """Compose's variables with nothing set: ``${NAME:-default}`` is its default, and
    ``${NAME}`` / ``${NAME:?message}`` (which must be set) a stand-in value."""
    def replace(match: re.Match[str]) -> str:
        name, operator, rest = match.group(1), match.group(2), match.group(3)
        return rest if operator == ":-" else f"x{name.lower()}"

    return re.sub(r"\$\{(\w+)(?:(:[?-])([^}]*))?\}", replace, value)


def environment(service: dict[str, Any]) -> dict[str, str]:
    return {name: substituted(str(value)) for name, value in service["environment"].items()}


def volume_targets(service: dict[str, Any]) -> dict[str, str]:
    """mount point -> named volume."""
    return {entry.split(":")[1]: entry.split(":")[0] for entry in service.get("volumes", [])}


def test_postgres_has_a_healthcheck_and_creates_optunas_database(compose) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert postgres["healthcheck"]["retries"] >= 1
    assert "pgdata" in compose["volumes"] and volume_targets(postgres)
    init = {config["source"]: config["target"] for config in postgres["configs"]}
    script = compose["configs"]["create-optuna-database"]["content"]
    assert init["create-optuna-database"].startswith("/docker-entrypoint-initdb.d/")
    optuna_database = make_url(environment(compose["services"]["worker"])[
        "TOPIARY_OPTUNA_URL"]).database
    assert f"CREATE DATABASE {optuna_database}" in script


def test_migrate_runs_once_after_postgres_and_before_the_api_and_workers(compose) -> None:
    services = compose["services"]
    migrate = services["migrate"]
    assert migrate["command"][-1] == "migrate" and migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name


def test_every_topiary_process_points_at_the_postgres_service(compose) -> None:
    services = compose["services"]
    postgres_env = services["postgres"]["environment"]
    for name in TOPIARY_SERVICES:
        env = environment(services[name])
        ours, optuna = make_url(env["TOPIARY_DATABASE_URL"]), make_url(env["TOPIARY_OPTUNA_URL"])
        for url in (ours, optuna):
            assert url.drivername == "postgresql+psycopg" and url.host == "postgres", name
            assert url.username == postgres_env["POSTGRES_USER"], name
        assert ours.database == postgres_env["POSTGRES_DB"], name
        assert optuna.database != ours.database, "Optuna needs its own database"
        # Every TOPIARY_* name is a real setting (a typo would be ignored silently).
        fields = {f"TOPIARY_{field.upper()}" for field in Settings.model_fields}
        assert set(env) <= fields, set(env) - fields
        Settings(**{key.removeprefix("TOPIARY_").lower(): value for key, value in env.items()})
    assert all(services[name]["image"] == services["api"]["image"] for name in TOPIARY_SERVICES)
    assert services["api"]["build"] == "."


def test_api_and_workers_share_artifacts_uploads_and_datasets(compose) -> None:
    services = compose["services"]
    api, worker = services["api"], services["worker"]
    assert volume_targets(api) == volume_targets(worker)
    env = environment(worker)
    mounts = volume_targets(worker)
    for setting in ("TOPIARY_ARTIFACT_DIR", "TOPIARY_UPLOAD_DIR", "TOPIARY_DATA_ROOT"):
        assert env[setting] in mounts, setting
        assert mounts[env[setting]] in compose["volumes"], "a named volume, not a host path"
        assert environment(api)[setting] == env[setting]


def test_api_requires_keys_and_workers_reserve_a_gpu_and_scale(compose) -> None:
    services = compose["services"]
    api, worker = services["api"], services["worker"]
    assert environment(api)["TOPIARY_AUTH"] == "key"
    assert api["command"][:2] == ["topiary", "serve"] and "0.0.0.0" in api["command"]
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert worker["command"][:2] == ["topiary", "worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    # `--scale worker=N` needs no fixed container name and no published port.
    assert "container_name" not in worker and "ports" not in worker
    assert "replicas" not in worker.get("deploy", {})


def test_a_reverse_proxy_with_request_timeouts_is_the_only_way_in(compose) -> None:
    services = compose["services"]
    api, proxy = services["api"], services["proxy"]
    assert "ports" not in api and api["expose"] == ["8000"]
    assert proxy["image"].startswith("nginx:")
    assert [port.split(":")[-1] for port in proxy["ports"]] == ["8080"]
    assert proxy["depends_on"]["api"]["condition"] == "service_healthy"
    mounted = {config["source"]: config["target"] for config in proxy["configs"]}
    assert mounted["proxy-config"] == "/etc/nginx/conf.d/default.conf"
    # Compose reads `$$` as one `$`.
    config = compose["configs"]["proxy-config"]["content"].replace("$$", "$")
    server_level = config[:config.index("location")]
    settings = dict(re.findall(r"^\s*(\w+)\s+([^;{]+);", server_level, re.MULTILINE))
    for timeout in ("client_header_timeout", "client_body_timeout", "send_timeout",
                    "keepalive_timeout", "proxy_read_timeout", "proxy_send_timeout"):
        assert re.fullmatch(r"\d+s", settings[timeout]), timeout
        assert int(settings[timeout][:-1]) <= 60, timeout
    assert "proxy_pass http://topiary_api;" in config and "server api:8000;" in config
    assert "limit_req zone=per_address" in config and "limit_req_zone $binary_remote_addr" in config
    # Uploads stream through, so the API refuses a bad key before their body; only event
    # streams may stay open past the read timeout.
    uploads = config[config.index("location = /v1/weights"):]
    assert "proxy_request_buffering off;" in uploads[:uploads.index("}")]
    events = config[config.index("location ~ ^/v1/jobs/[^/]+/events$"):]
    assert "proxy_buffering off;" in events[:events.index("}")]
    assert "return 404;" in config[config.index("location = /metrics"):]


def test_every_api_process_counts_rates_in_the_shared_redis(compose) -> None:
    services = compose["services"]
    url = environment(services["api"])["TOPIARY_RATE_LIMIT_STORAGE"]
    assert url.startswith("redis://redis:")
    redis = services["redis"]
    assert redis["image"].startswith("redis:") and "ping" in redis["healthcheck"]["test"]
    assert services["api"]["depends_on"]["redis"]["condition"] == "service_healthy"


def requirement_pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = re.match(r"\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*==\s*([^\s;,]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_dockerfile_installs_the_project_with_pyprojects_pins() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = requirement_pins(project["project"]["dependencies"])
    assert "torch" in declared
    installs = [line for line in dockerfile.replace("\\\n", " ").splitlines()
                if "pip install" in line]
    assert any(re.search(r"pip install \.(\s|$)", line) for line in installs), installs
    for line in installs:
        for package, version in re.findall(r"([A-Za-z0-9_.\-]+)==([^\s\"']+)", line):
            assert declared.get(package.lower()) == version, (package, version)
        assert "-r " not in line and "requirements" not in line, line
    base = re.search(r"^FROM python:(\d+)\.(\d+)", dockerfile, re.MULTILINE)
    assert base is not None
    minimum = re.search(r"(\d+)\.(\d+)", project["project"]["requires-python"])
    assert (int(base[1]), int(base[2])) >= (int(minimum[1]), int(minimum[2]))
    for package in (name.rstrip("*") for name in
                    project["tool"]["setuptools"]["packages"]["find"]["include"]):
        assert re.search(rf"^COPY {package} ", dockerfile, re.MULTILINE), package
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".topiary" in ignored and ".env" in ignored


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker command here")
def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker has no compose plugin here")
    result = subprocess.run(["docker", "compose", "-f", str(ROOT / "docker-compose.yml"),
                             "config", "--quiet"], capture_output=True, text=True,
                            env={"POSTGRES_PASSWORD": "checked", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("nginx") is None, reason="no nginx command here")
def test_nginx_accepts_the_proxy_config(compose, tmp_path: Path) -> None:
    config = compose["configs"]["proxy-config"]["content"].replace("$$", "$")
    (tmp_path / "default.conf").write_text(config.replace("server api:8000;",
                                                          "server 127.0.0.1:8000;"))
    (tmp_path / "nginx.conf").write_text(
        f"events {{}}\nhttp {{ include {tmp_path / 'default.conf'}; }}\n"
        f"pid {tmp_path / 'nginx.pid'};\nerror_log {tmp_path / 'error.log'};\n")
    result = subprocess.run(["nginx", "-t", "-c", str(tmp_path / "nginx.conf")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
