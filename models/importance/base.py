"""The result every scorer returns, and the small helpers the scorers share."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from core.errors import InvalidSpecError
from models.datasets import DataSplits

#: The scoring methods ``models.importance.score`` knows.
METHODS = ("attention", "pls", "magnitude", "taylor")


@dataclass
class ImportanceScores:
    """Importance of channels, prunable groups and removable blocks. Higher = more important.

    Attributes:
        method: the scorer that produced them (one of ``METHODS``).
        channel: group name -> one score per ORIGINAL output channel of the group's root conv.
        group: group name -> one score for the whole group (comparable across groups).
        block: removable block name -> one score (comparable across blocks).
        seconds: wall-clock time the scoring took.
        settings: the scorer's settings, defaults filled in.
    """

    method: str
    channel: dict[str, Tensor]
    group: dict[str, float]
    block: dict[str, float]
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy (tensors become lists of floats)."""
        return {
            "method": self.method,
            "channel": {name: [float(v) for v in values.tolist()]
                        for name, values in self.channel.items()},
            "group": {name: float(value) for name, value in self.group.items()},
            "block": {name: float(value) for name, value in self.block.items()},
            "seconds": float(self.seconds),
            "settings": dict(self.settings),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImportanceScores:
        """Rebuild scores written by ``to_dict``.

        Raises:
            InvalidSpecError: a field is missing or the method is unknown.
        """
        try:
            method = str(data["method"])
            channel = {name: torch.tensor(values, dtype=torch.float32)
                       for name, values in data["channel"].items()}
            group = {name: float(value) for name, value in data["group"].items()}
            block = {name: float(value) for name, value in data["block"].items()}
            seconds = float(data["seconds"])
        except (KeyError, TypeError, AttributeError) as error:
            raise InvalidSpecError(f"stored importance scores are incomplete ({error!r}); "
                                   "recompute them") from error
        if method not in METHODS:
            raise InvalidSpecError(f"stored importance scores name an unknown method {method!r}; "
                                   f"known: {', '.join(METHODS)}")
        return cls(method, channel, group, block, seconds, dict(data.get("settings", {})))

    def groups_by_importance(self) -> list[str]:
        """Group names, least important first."""
        return sorted(self.group, key=lambda name: self.group[name])

    def blocks_by_importance(self) -> list[str]:
        """Block names, least important first."""
        return sorted(self.block, key=lambda name: self.block[name])


def calibration_batches(splits: DataSplits, batch_size: int,
                        limit: int | None = None, shuffle: bool = False,
                        seed: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches of the calibration split, cycling through it until ``limit`` batches.

    Args:
        splits: the dataset.
        batch_size: images per batch.
        limit: how many batches; one pass over the split when None.
        shuffle: reshuffle (seeded) on every pass.
        seed: the seed of the first pass; pass ``i`` uses ``seed + i``.

    Raises:
        InvalidSpecError: the calibration split is empty.
    """
    if len(splits.calibration) == 0:  # type: ignore[arg-type]
        raise InvalidSpecError("the dataset's calibration split is empty; scoring needs data")
    produced = 0
    epoch = 0
    while True:
        loader = splits.loader("calibration", batch_size=batch_size, shuffle=shuffle,
                               seed=seed + epoch)
        for images, labels in loader:
            yield images, labels
            produced += 1
            if limit is not None and produced >= limit:
                return
        epoch += 1
        if limit is None:
            return


def check_settings(method: str, given: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The defaults overridden by ``given``; unknown names are refused.

    Raises:
        InvalidSpecError: a setting the method does not take.
    """
    unknown = set(given) - set(defaults)
    if unknown:
        raise InvalidSpecError(f"scorer {method!r} takes {sorted(defaults)}, not {sorted(unknown)}")
    return {**defaults, **given}
