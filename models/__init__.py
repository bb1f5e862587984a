"""Networks and what is done to them: build, load data, plan, prune, measure, train, export.

No database and no Optuna here. This package imports torch; the torch-free
vocabulary the API needs (errors, catalog, job spec) lives in ``core``.
"""

from __future__ import annotations

from core.catalog import list_architectures, list_datasets
from models.architectures import build_model
from models.checkpoints import load_weights
from models.datasets import load_dataset
from models.export import load_pruned, save_pruned
from models.measure import measure_model
from models.plan import PrunePlan, apply_plan, prunable_groups
from models.train import evaluate, fine_tune, train_model

__all__ = [
    "PrunePlan",
    "apply_plan",
    "build_model",
    "evaluate",
    "fine_tune",
    "list_architectures",
    "list_datasets",
    "load_dataset",
    "load_pruned",
    "load_weights",
    "measure_model",
    "prunable_groups",
    "save_pruned",
    "train_model",
]
