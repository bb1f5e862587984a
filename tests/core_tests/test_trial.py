"""The trial record round-trips through Optuna's storage, and feasibility is Optuna's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from core.trial import HEADLINE_FIELDS, TrialRecord

MEASURED: dict[str, Any] = {
    "plan": {"keep": {"layer1.0.conv1": 8}, "drop_blocks": ["layer2.1"], "round_to": 4},
    "accuracy": 0.91, "accuracy_pruned": 0.72, "latency_ms": 1.5, "latency_p90_ms": 1.7,
    "latency_ratio": 0.6, "latency_raw_ms": 1.4, "latency_reused": False,
    "latency_seeded": True, "latency_retimed": False, "memory_mb": 2.5, "model_mb": 1.0,
    "peak_activation_mb": 1.5, "flops": 1_200_000, "macs": 1_200_000, "params": 20_000,
    "batch_size": 1, "device_type": "cpu", "device_name": "test CPU", "threads": 1,
    "arch_fingerprint": "0123456789abcdef", "fine_tune_seconds": 3.25, "worker": "w-1",
    "violations": {"max_flops_ratio": -0.25, "max_latency_ms": 0.1},
}


def _storage(kind: str, tmp_path: Path) -> optuna.storages.BaseStorage | str:
    return (optuna.storages.InMemoryStorage() if kind == "memory"
            else f"sqlite:///{tmp_path / 'optuna.db'}")


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_record_round_trips_through_a_real_trial(kind: str, tmp_path: Path) -> None:
    study = optuna.create_study(storage=_storage(kind, tmp_path), direction="maximize")
    record = TrialRecord.model_validate(MEASURED)
    trial = study.ask()
    record.store(trial)
    study.tell(trial, 0.91)

    [stored] = study.get_trials()
    assert TrialRecord.from_trial(stored) == record
    # One user attribute per field, named as the field; the limits are Optuna's constraints.
    assert set(stored.user_attrs) == set(MEASURED) - {"violations"}
    assert stored.constraints == MEASURED["violations"]
    assert TrialRecord.from_trial(stored).feasible is False


def test_a_record_cannot_carry_a_key_it_does_not_declare() -> None:
    with pytest.raises(ValueError, match="latency_typo"):
        TrialRecord.model_validate({**MEASURED, "latency_typo": 1.0})


def test_older_trials_read_with_missing_fields_as_none() -> None:
    # Stored before the record existed: the feasibility flag and violations as user
    # attributes, other bookkeeping (warm_start, surplus) and no timing details.
    old = create_trial(state=TrialState.COMPLETE, value=0.8, params={"x": 0.5},
                       distributions={"x": FloatDistribution(0, 1)},
                       user_attrs={"plan": {"keep": {}}, "accuracy": 0.8, "latency_ms": 2.0,
                                   "feasible": True, "violations": {"max_flops": 0.5},
                                   "warm_start": "pls", "surplus": False},
                       constraints={"max_flops": 0.5})
    record = TrialRecord.from_trial(old)
    assert record.accuracy == 0.8 and record.latency_ms == 2.0
    assert record.latency_ratio is None and record.fine_tune_seconds is None
    # The stored constraints decide, as in Optuna, not the old flag.
    assert record.violations == {"max_flops": 0.5} and record.feasible is False


def test_feasibility_follows_optunas_rule() -> None:
    def feasible(constraints: dict[str, float] | None, **attrs: Any) -> bool | None:
        trial = create_trial(state=TrialState.COMPLETE, value=0.5, user_attrs=attrs,
                             constraints=constraints)
        return TrialRecord.from_trial(trial).feasible

    assert feasible({"max_params": 0.0, "max_flops": -0.1}, plan={}) is True
    assert feasible({"max_params": 1e-9}, plan={}) is False
    assert feasible(None, plan={}) is True  # no limits: every measured plan fits
    assert feasible(None) is None  # nothing measured (stopped by the pruner, or crashed)


def test_the_headline_is_what_the_job_shows() -> None:
    headline = TrialRecord.model_validate(MEASURED).headline()
    assert set(headline) == HEADLINE_FIELDS
    assert headline["feasible"] is False and headline["plan"] == MEASURED["plan"]
