from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from core.spec import JobSpec
from models import load_dataset, prunable_groups
from models.datasets import DataSplits
from models.plan import removable_blocks
from models.train import TrainConfig, train_baseline
from search.costs import LatencyTimer
from search.objective import SearchContext, measure_baseline
from search.space import SearchSpace


def study_of(tmp_path: Path, directions: list[str], *trials: optuna.trial.FrozenTrial
             ) -> optuna.Study:
    """A SQLite study under ``tmp_path`` holding ``trials`` (made with Optuna's create_trial)."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                                directions=directions)
    study.add_trials(trials)
    return study


def make_spec(**overrides: object) -> JobSpec:
    data: dict = {
        "name": "search-test",
        "model": {"arch": "cifar_resnet20"},
        "dataset": {"name": "digits", "image_size": 16},
        "objective": {"constraints": {"max_flops_ratio": 0.6}},
        "search": {"n_trials": 4, "warm_start": []},
        "fine_tune": {"trial_epochs": 1},
        "latency": {"runs": 5, "warmup": 1},
    }
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return JobSpec.model_validate(data)


@dataclass(frozen=True)
class ScriptedTimer(LatencyTimer):
    """Latency timings from a script, so rules about timings are tested without this
    machine's noise; an exhausted script fails the test if asked for one more."""

    timings: list[float] = field(default_factory=list)

    def time(self, network: nn.Module) -> dict[str, float]:
        timing = self.timings.pop(0)
        return {"latency_ms": timing, "latency_p90_ms": 2 * timing}


@dataclass
class Baseline:
    model: nn.Module
    splits: DataSplits


@pytest.fixture(scope="session")
def baseline() -> Baseline:
    torch.set_num_threads(1)
    splits = load_dataset("digits", image_size=16, seed=0)
    model = train_baseline("cifar_resnet20", {}, splits, TrainConfig(epochs=3, seed=0))
    return Baseline(model, splits)


@pytest.fixture(scope="session")
def baseline_metrics(baseline: Baseline) -> dict:
    return measure_baseline(baseline.model, baseline.splits, make_spec())


def make_context(baseline: Baseline, metrics: dict, spec: JobSpec) -> SearchContext:
    x = baseline.splits.example_input()
    space = SearchSpace.from_spec(prunable_groups(baseline.model, x),
                                  removable_blocks(baseline.model, x), spec.search)
    return SearchContext(spec, baseline.model, baseline.splits, space, dict(metrics))
