"""What a worker's phases share (``workers.runtime``)."""

from __future__ import annotations

import subprocess

import pytest
import torch

from service.config import Settings
from tests.support import program_environment, worker_command
from tests.workers_tests.conftest import make_settings
from workers.worker import Worker


def test_trial_heartbeats_follow_the_workers_setting(tmp_path, sqlite_settings: Settings,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOPIARY_HEARTBEAT_SECONDS", "3")
    settings = make_settings(tmp_path / "home", sqlite_settings.database_url,
                             sqlite_settings.optuna_url)
    storage = Worker(settings, device="cpu", threads=1).runtime.study_storage()
    # A trial whose worker died is failed after twice the interval (10 s, 20 s by default).
    assert (storage.heartbeat_interval, storage.grace_period) == (3, 6)
    storage.engine.dispose()


def test_a_worker_with_a_bad_setting_names_it_and_exits_2(tmp_path) -> None:
    environment = program_environment(tmp_path, heartbeat_seconds=0)
    finished = subprocess.run(worker_command(), env=environment, capture_output=True,
                              text=True, timeout=120)
    assert finished.returncode == 2, finished.stderr
    assert "bad settings: TOPIARY_HEARTBEAT_SECONDS: Input should be greater than or equal " \
           "to 1" in finished.stderr
    assert "Traceback" not in finished.stderr, finished.stderr


@pytest.mark.parametrize("device", ["tpu", "cuda:7"])
def test_a_worker_asked_for_a_device_it_lacks_says_so_and_exits_2(tmp_path, device: str) -> None:
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    finished = subprocess.run(worker_command("--device", device),
                              env=program_environment(tmp_path), capture_output=True,
                              text=True, timeout=120)
    assert finished.returncode == 2, finished.stderr
    assert f"device {device!r}" in finished.stderr, finished.stderr
    assert "Traceback" not in finished.stderr, finished.stderr
