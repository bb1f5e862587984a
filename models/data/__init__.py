"""Data: the IDX reader, preprocessing presets, and the batch pipelines.

``models.datasets`` builds the splits of each dataset from these parts.
"""

from __future__ import annotations

from models.data.idx import read_idx, read_idx_split
from models.data.loaders import (
    Batches,
    FileImages,
    LoaderSettings,
    TensorImages,
    default_loader_workers,
    make_batches,
    unwrap_subsets,
)
from models.data.presets import Preprocessing, preprocess_image, resolve_preprocessing

__all__ = [
    "Batches",
    "FileImages",
    "LoaderSettings",
    "Preprocessing",
    "TensorImages",
    "default_loader_workers",
    "make_batches",
    "preprocess_image",
    "read_idx",
    "read_idx_split",
    "resolve_preprocessing",
    "unwrap_subsets",
]
