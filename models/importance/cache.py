"""A folder of computed importance scores, keyed by what determines them.

Key = sha256 of the model's weights (state dict), the dataset's identity
(name, image size, split seed), the method, its resolved settings and the
groups and blocks scored. One JSON file per key, written atomically (a
temporary file in the same folder, then ``os.replace``), so concurrent workers
never read half a file; two workers computing the same key both write the same
content.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import TopiaryError
from models.datasets import DataSplits

from .base import ImportanceScores
from .scoring import resolve_settings, score
from .targets import default_block_names, default_group_names

_FORMAT = 1


def weights_sha256(model: nn.Module) -> str:
    """sha256 (hex) of the model's state dict: names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.view(-1).view(torch.uint8).numpy().tobytes()
                      if value.numel() else b"")
    return digest.hexdigest()


def dataset_identity(name: str, image_size: int | None, seed: int = 0,
                     root: str | None = None) -> str:
    """The dataset part of a cache key (``digits/16/seed0``; a root is appended when given)."""
    identity = f"{name}/{image_size}/seed{seed}"
    return f"{identity}/{root}" if root else identity


@dataclass(frozen=True)
class ScoreKey:
    """Everything that determines a set of importance scores.

    Attributes:
        weights_sha256: ``weights_sha256(model)``.
        dataset: ``dataset_identity(...)``.
        method: the scoring method.
        settings: the method's resolved settings (defaults filled in).
        groups: the group names scored, in order.
        blocks: the block names scored, in order.
    """

    weights_sha256: str
    dataset: str
    method: str
    settings: dict[str, Any] = field(default_factory=dict)
    groups: tuple[str, ...] = ()
    blocks: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"format": _FORMAT, "weights_sha256": self.weights_sha256,
                "dataset": self.dataset, "method": self.method,
                "settings": self.settings, "groups": list(self.groups),
                "blocks": list(self.blocks)}

    def digest(self) -> str:
        """sha256 (hex) of the key's canonical JSON: the cache file's name."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"),
                               default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()


class ScoreCache:
    """Importance scores stored as JSON files in one folder.

    Args:
        directory: where the files live; created when missing.

    Raises:
        TopiaryError: the folder cannot be created.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TopiaryError(f"cannot create the score cache folder {str(self.directory)!r}: "
                               f"{error}; point it at a writable folder") from error

    def path(self, key: ScoreKey) -> Path:
        """The file that holds (or would hold) the scores of ``key``."""
        return self.directory / f"{key.method}-{key.digest()}.json"

    def get(self, key: ScoreKey) -> ImportanceScores | None:
        """The stored scores of ``key``, or None when absent or unreadable."""
        path = self.path(key)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if data.get("key") != json.loads(json.dumps(key.to_dict(), default=str)):
            return None
        try:
            return ImportanceScores.from_dict(data["scores"])
        except (KeyError, TopiaryError):
            return None

    def put(self, key: ScoreKey, scores: ImportanceScores) -> Path:
        """Store ``scores`` under ``key`` atomically; returns the file written."""
        path = self.path(key)
        payload = json.dumps({"key": key.to_dict(), "scores": scores.to_dict()},
                             sort_keys=True, default=str)
        handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(handle, "w") as stream:
                stream.write(payload)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return path

    def get_or_compute(self, key: ScoreKey,
                       compute: Callable[[], ImportanceScores]) -> ImportanceScores:
        """The stored scores of ``key``; computed with ``compute()`` and stored when missing."""
        found = self.get(key)
        if found is not None:
            return found
        computed = compute()
        self.put(key, computed)
        return computed


def _names(items: Sequence[Any]) -> tuple[str, ...]:
    return tuple(item if isinstance(item, str) else item.name for item in items)


def score_key(model: nn.Module, splits: DataSplits, method: str, dataset: str,
              groups: Sequence[Any] | None = None, blocks: Sequence[Any] | None = None,
              **settings: Any) -> ScoreKey:
    """The cache key of ``score(model, splits, method, groups, blocks, **settings)``.

    Args:
        dataset: ``dataset_identity(...)`` of ``splits`` (they do not know their name).
    """
    example = splits.example_input()
    group_names = _names(groups) if groups is not None else tuple(
        default_group_names(model, example))
    block_names = _names(blocks) if blocks is not None else tuple(
        default_block_names(model, example))
    return ScoreKey(weights_sha256(model), dataset, method, resolve_settings(method, settings),
                    group_names, block_names)


def cached_score(cache: ScoreCache, model: nn.Module, splits: DataSplits, method: str,
                 dataset: str, groups: Sequence[Any] | None = None,
                 blocks: Sequence[Any] | None = None, **settings: Any) -> ImportanceScores:
    """``score(...)`` through ``cache``: computed only when no stored copy matches.

    Args:
        cache: where scores are kept.
        dataset: ``dataset_identity(...)`` of ``splits``.
        Other arguments: as in ``models.importance.score``.
    """
    key = score_key(model, splits, method, dataset, groups, blocks, **settings)
    return cache.get_or_compute(
        key, lambda: score(model, splits, method, list(key.groups), list(key.blocks), **settings))
