"""A job's trials, read from its Optuna study (Optuna's own database), and their Pareto front.

Each trial's measurements are read through ``core.trial.TrialRecord``, as the
objective wrote them. Optuna is imported when a ``StudyReader`` is built (it does not
import torch), not by importing this module.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from core.trial import TrialRecord
from service.errors import DatabaseError

OPTUNA_UNAVAILABLE = "the Optuna database (the trials) is unavailable"


class TrialPublic(BaseModel):
    """One trial as the API shows it (missing measurements are None); the API's schema too.

    The measurements are ``TrialRecord`` fields of the same names; ``fidelity`` says what
    ``accuracy`` measured (costs, pruned, probe, short, long), ``rerank_of`` the trial a
    re-rank re-measured, ``projected`` that the sampled plan was scaled onto a limit.
    """

    model_config = ConfigDict(frozen=True)

    number: int
    state: str
    values: list[float] | None
    plan: dict[str, Any] | None
    accuracy: float | None
    latency_ms: float | None
    latency_p90_ms: float | None
    memory_mb: float | None
    flops: float | None
    params: float | None
    feasible: bool | None
    fine_tune_seconds: float | None
    fidelity: str | None
    accuracy_probe: float | None
    rerank_of: int | None
    projected: bool | None
    started_at: datetime | None
    completed_at: datetime | None

    @classmethod
    def from_trial(cls, trial: Any) -> TrialPublic:
        """One trial of a study (an Optuna ``FrozenTrial``)."""
        measured = TrialRecord.from_trial(trial).model_dump(include=set(cls.model_fields))
        return cls(number=trial.number, state=trial.state.name.lower(),
                   values=list(trial.values) if trial.values is not None else None,
                   started_at=trial.datetime_start, completed_at=trial.datetime_complete,
                   **measured)


class StudyReader:
    """Reads studies from one Optuna storage URL; one connection pool per process."""

    def __init__(self, optuna_url: str) -> None:
        # Imported here, once, by the thread that builds the reader (the API's start-up):
        # left to the first request, two request threads importing it at the same moment
        # can find a module half-initialised (an ImportError, a 500, seen under load).
        import optuna.exceptions  # noqa: F401
        import optuna.storages  # noqa: F401

        self._url = optuna_url
        self._storage: Any = None
        self._lock = threading.Lock()

    def _get_storage(self) -> Any:
        with self._lock:
            if self._storage is None:
                from optuna.storages import RDBStorage

                self._storage = RDBStorage(self._url, engine_kwargs={"pool_pre_ping": True})
            return self._storage

    def trials(self, study_name: str | None) -> list[TrialPublic]:
        """Every trial of the study, by number; empty when the study does not exist yet.

        Raises:
            DatabaseError: Optuna's database cannot be read.
        """
        if not study_name:
            return []
        from optuna.exceptions import StorageInternalError
        from sqlalchemy.exc import SQLAlchemyError

        try:
            storage = self._get_storage()
            study_id = storage.get_study_id_from_name(study_name)
            trials = storage.get_all_trials(study_id, deepcopy=False)
        except KeyError:
            return []
        except (SQLAlchemyError, StorageInternalError) as error:
            # Optuna wraps the driver's errors of an open session in StorageInternalError.
            raise DatabaseError(f"the Optuna database could not be read "
                                f"({type(error).__name__}); retry, and check "
                                "TOPIARY_OPTUNA_URL if it persists",
                                public=OPTUNA_UNAVAILABLE) from error
        return [TrialPublic.from_trial(trial) for trial in trials]

    def delete_study(self, study_name: str | None) -> None:
        """Remove a study and its trials (nothing when it does not exist).

        Raises:
            DatabaseError: Optuna's database cannot be written.
        """
        if not study_name:
            return
        from optuna.exceptions import StorageInternalError
        from sqlalchemy.exc import SQLAlchemyError

        try:
            storage = self._get_storage()
            storage.delete_study(storage.get_study_id_from_name(study_name))
        except KeyError:
            return
        except (SQLAlchemyError, StorageInternalError) as error:
            raise DatabaseError(f"the Optuna database could not be written "
                                f"({type(error).__name__}); retry, and check "
                                "TOPIARY_OPTUNA_URL if it persists",
                                public=OPTUNA_UNAVAILABLE) from error

    def close(self) -> None:
        with self._lock:
            if self._storage is not None:
                self._storage.remove_session()
                self._storage.engine.dispose()
                self._storage = None


def _costs(trial: TrialPublic) -> tuple[float, float, float] | None:
    """What the front minimises: (-accuracy, latency, memory); None when unmeasured."""
    if trial.accuracy is None or trial.latency_ms is None or trial.memory_mb is None:
        return None
    return (-trial.accuracy, trial.latency_ms, trial.memory_mb)


def _dominates(first: tuple[float, ...], second: tuple[float, ...]) -> bool:
    return (all(a <= b for a, b in zip(first, second, strict=True))
            and any(a < b for a, b in zip(first, second, strict=True)))


def pareto_front(trials: list[TrialPublic]) -> list[TrialPublic]:
    """Feasible complete trials no other such trial beats on accuracy, latency and memory.

    Args:
        trials: a study's trials.

    Returns:
        The non-dominated ones (max accuracy, min latency_ms, min memory_mb), by number.
    """
    candidates = [(costs, trial) for trial in trials
                  if trial.state == "complete" and trial.feasible is True
                  and (costs := _costs(trial)) is not None]
    return [trial for costs, trial in candidates
            if not any(_dominates(other, costs) for other, _ in candidates)]
