"""The search space: how an Optuna trial becomes a PrunePlan, and back.

Per-layer space: one integer per prunable group (channels kept: a multiple of
``round_to``, or the full width, so every pruned width runtimes and GPUs see is
aligned). Per-stage space: one keep ratio per stage, shared by its
groups (for large networks). Either way, one boolean per removable block
when block removal is allowed. ``plan_to_params`` inverts the mapping so
warm-start plans can be enqueued as the first trials.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.spec import CPU_ROUND_TO, SearchSpec
from models.groups import min_keep_for

KEEP_PREFIX = "keep:"
RATIO_PREFIX = "ratio:"
DROP_PREFIX = "drop:"


class GroupLike(Protocol):
    name: str
    channels: int
    stage: str


class BlockLike(Protocol):
    name: str


class TrialLike(Protocol):
    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1) -> int: ...

    def suggest_float(self, name: str, low: float, high: float) -> float: ...

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


@dataclass(frozen=True)
class GroupRange:
    """The values one group's keep count can take: ``low, low+step, ...`` below the full
    width, then ``channels`` (``low`` is a multiple of ``step``, or the full width)."""

    name: str
    channels: int
    stage: str
    low: int
    step: int

    def units(self) -> int:
        """How many steps separate the smallest and the full width."""
        return math.ceil((self.channels - self.low) / self.step)

    def keep_for_units(self, units: int) -> int:
        return min(self.channels, self.low + units * self.step)

    def units_for_keep(self, keep: int) -> int:
        return max(0, min(self.units(), round((keep - self.low) / self.step)))

    def keep_for_ratio(self, ratio: float) -> int:
        return self.keep_for_units(self.units_for_keep(math.ceil(ratio * self.channels)))


@dataclass
class SearchSpace:
    """Everything needed to suggest, and to encode, a plan."""

    groups: list[GroupRange]
    blocks: list[str] = field(default_factory=list)
    per_stage: bool = False
    min_keep_ratio: float = 0.1
    round_to: int = 1

    @classmethod
    def from_spec(cls, groups: Sequence[GroupLike], blocks: Sequence[BlockLike],
                  search: SearchSpec, round_to: int | None = None) -> SearchSpace:
        """Bounds from the spec: no group below ``min_keep_ratio``, every width a multiple
        of the channel multiple or the full width.

        Args:
            groups, blocks: the network's prunable groups and removable blocks.
            search: the spec's search section.
            round_to: the channel multiple (``JobSpec.channel_multiple`` of the worker's
                device); default ``search.round_to``, else the CPU default.
        """
        multiple = round_to or search.round_to or CPU_ROUND_TO
        ranges = []
        for group in groups:
            floor = min_keep_for(group.channels, multiple, search.min_keep_ratio)
            ranges.append(GroupRange(group.name, group.channels, group.stage, floor, multiple))
        return cls(
            groups=ranges,
            blocks=[block.name for block in blocks] if search.allow_block_removal else [],
            per_stage=search.space == "per_stage",
            min_keep_ratio=search.min_keep_ratio,
            round_to=multiple,
        )

    def plan_round_to(self) -> int:
        """The ``round_to`` every plan from this space honours."""
        return self.round_to

    def stages(self) -> list[str]:
        return list(dict.fromkeys(group.stage for group in self.groups))

    def suggest(self, trial: TrialLike) -> tuple[dict[str, int], list[str]]:
        """Ask the trial for every parameter; returns (keep counts, dropped blocks)."""
        keep: dict[str, int] = {}
        if self.per_stage:
            ratios = {stage: trial.suggest_float(RATIO_PREFIX + stage, self.min_keep_ratio, 1.0)
                      for stage in self.stages()}
            for group in self.groups:
                keep[group.name] = group.keep_for_ratio(ratios[group.stage])
        else:
            for group in self.groups:
                units = trial.suggest_int(KEEP_PREFIX + group.name, 0, group.units())
                keep[group.name] = group.keep_for_units(units)
        dropped = [name for name in self.blocks
                   if trial.suggest_categorical(DROP_PREFIX + name, [False, True])]
        return keep, dropped

    def params_for(self, keep: dict[str, int], dropped: Sequence[str]) -> dict[str, Any]:
        """The trial parameters that reproduce a plan (as closely as the space allows)."""
        params: dict[str, Any] = {}
        if self.per_stage:
            for stage in self.stages():
                members = [g for g in self.groups if g.stage == stage]
                ratio = sum(keep.get(g.name, g.channels) / g.channels for g in members)
                params[RATIO_PREFIX + stage] = max(self.min_keep_ratio,
                                                   min(1.0, ratio / len(members)))
        else:
            for group in self.groups:
                params[KEEP_PREFIX + group.name] = group.units_for_keep(
                    keep.get(group.name, group.channels))
        for name in self.blocks:
            params[DROP_PREFIX + name] = name in dropped
        return params
