"""Several processes on one study (real processes, real PostgreSQL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from models.checkpoints import save_weights
from search.budget import is_surplus
from search.storage import open_storage

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _start(weights: Path, url: str, study: str, n_trials: int, worker: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.search_tests.search_process", str(weights), url, study,
         str(n_trials), worker],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def weights(tmp_path, baseline) -> Path:
    path = tmp_path / "baseline.safetensors"
    save_weights(baseline.model, path)
    return path


def _finished(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    loaded = optuna.load_study(study_name=study, storage=open_storage(url))
    return loaded.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


def test_two_processes_reach_exactly_n_trials(postgres_url: str, weights: Path) -> None:
    n_trials = 8
    workers = [_start(weights, postgres_url, "shared", n_trials, f"w{i}") for i in range(2)]
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-3000:]
        assert out.strip().endswith("budget")
    finished = _finished(postgres_url, "shared")
    assert len(finished) == n_trials
    assert sorted({t.number for t in finished}) == sorted(t.number for t in finished)
    by_worker = Counter(t.user_attrs["worker"] for t in finished)
    assert set(by_worker) == {"w0", "w1"}, by_worker  # both really took part


def test_a_killed_process_loses_no_trial(postgres_url: str, weights: Path) -> None:
    """SIGKILL one process mid-search: its running trial goes stale, is retried, and the
    survivor still finishes exactly n_trials."""
    n_trials = 8
    victim = _start(weights, postgres_url, "killed", n_trials, "victim")
    storage = open_storage(postgres_url)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            study = optuna.load_study(study_name="killed", storage=storage)
            if study.get_trials(states=(TrialState.COMPLETE,)) and \
                    study.get_trials(states=(TrialState.RUNNING,)):
                break
        except KeyError:
            pass
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    survivor = _start(weights, postgres_url, "killed", n_trials, "survivor")
    out, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err[-3000:]
    finished = _finished(postgres_url, "killed")
    assert len(finished) == n_trials
    everything = optuna.load_study(study_name="killed", storage=storage).trials
    stale = [t for t in everything if t.state == TrialState.FAIL and not is_surplus(t)]
    assert stale, "the killed process's running trial should have been failed as stale"
    assert not [t for t in everything if t.state == TrialState.RUNNING]
