"""The search space: how an Optuna trial becomes a PrunePlan, and back.

Per-layer space: one integer per prunable group (channels kept: a multiple of
``round_to``, or the full width, so every pruned width runtimes and GPUs see is
aligned). Per-stage space: one keep ratio per stage, shared by its
groups (for large networks). Either way, one boolean per removable block
when block removal is allowed. ``params_for`` inverts the mapping so
warm-start plans can be enqueued as the first trials.

The block booleans are asked first, and a group that lives inside a dropped
block (``GroupInfo.block``: the block holds its root conv, so all of it) is not
asked for: its width changes nothing, and a sampler that had to choose it would
learn from noise. Such trials simply have no ``keep:`` parameter for the group
(TPE models conditional spaces with ``group``), and ``params_for`` leaves it out too.

GP and NSGA-II model only the parameters every trial has (Optuna's intersection search
space) and draw the rest independently at random: in a conditional space with block
removal that is every width, so they would be random search. For them the space is
fixed (``conditional`` False): every group's width is asked for in every trial, and
those of dropped blocks are ignored when the plan is made.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.spec import CPU_ROUND_TO, SearchSpec
from models.groups import min_keep_for
from models.plan import PrunePlan

KEEP_PREFIX = "keep:"
RATIO_PREFIX = "ratio:"
DROP_PREFIX = "drop:"
#: Samplers that model a conditional space (the others get every width in every trial).
CONDITIONAL_SAMPLERS = frozenset({"tpe", "random"})


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
    block: str | None = None

    def units(self) -> int:
        """How many steps separate the smallest and the full width."""
        return math.ceil((self.channels - self.low) / self.step)

    def keep_for_units(self, units: int) -> int:
        return min(self.channels, self.low + units * self.step)

    def units_for_keep(self, keep: int) -> int:
        return max(0, min(self.units(), round((keep - self.low) / self.step)))

    def wider(self, keep: int) -> int:
        """The next width on the grid above ``keep`` (below the full width); a width off
        the grid moves onto it."""
        return self.keep_for_units(max(0, (keep - self.low) // self.step + 1))

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
    conditional: bool = True

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

        The space is conditional for the samplers that model conditional spaces (TPE,
        random), fixed for those that model only the intersection (GP, NSGA-II).
        """
        multiple = round_to or search.round_to or CPU_ROUND_TO
        ranges = []
        for group in groups:
            floor = min_keep_for(group.channels, multiple, search.min_keep_ratio)
            ranges.append(GroupRange(group.name, group.channels, group.stage, floor, multiple,
                                     getattr(group, "block", None)))
        return cls(
            groups=ranges,
            blocks=[block.name for block in blocks] if search.allow_block_removal else [],
            per_stage=search.space == "per_stage",
            min_keep_ratio=search.min_keep_ratio,
            round_to=multiple,
            conditional=search.sampler in CONDITIONAL_SAMPLERS,
        )

    def plan_round_to(self) -> int:
        """The ``round_to`` every plan from this space honours."""
        return self.round_to

    def stages(self) -> list[str]:
        return list(dict.fromkeys(group.stage for group in self.groups))

    def suggest(self, trial: TrialLike) -> tuple[dict[str, int], list[str]]:
        """Ask the trial for every parameter that matters; returns (keep counts, dropped
        blocks). Blocks first; groups inside a dropped block are not listed, and not asked
        for either unless the space is fixed (``conditional`` False)."""
        dropped = [name for name in self.blocks
                   if trial.suggest_categorical(DROP_PREFIX + name, [False, True])]
        keep: dict[str, int] = {}
        if self.per_stage:
            ratios = {stage: trial.suggest_float(RATIO_PREFIX + stage, self.min_keep_ratio, 1.0)
                      for stage in self.stages()}
            for group in self.live_groups(dropped):
                keep[group.name] = group.keep_for_ratio(ratios[group.stage])
        else:
            live = {group.name for group in self.live_groups(dropped)}
            for group in self.asked_groups(dropped):
                units = trial.suggest_int(KEEP_PREFIX + group.name, 0, group.units())
                if group.name in live:
                    keep[group.name] = group.keep_for_units(units)
        return keep, dropped

    def asked_groups(self, dropped: Sequence[str]) -> list[GroupRange]:
        """The groups whose width a trial is asked for when ``dropped`` blocks are gone:
        the live ones in a conditional space, all of them in a fixed one."""
        return self.live_groups(dropped) if self.conditional else list(self.groups)

    def live_groups(self, dropped: Sequence[str]) -> list[GroupRange]:
        """The groups that still exist when ``dropped`` blocks are gone."""
        gone = set(dropped)
        return [group for group in self.groups if group.block is None or group.block not in gone]

    def to_plan(self, keep: dict[str, int], dropped: Sequence[str]) -> PrunePlan:
        """The plan of a suggestion: only the groups that lose channels (so a plan that
        keeps every width and every block is ``PrunePlan.is_unpruned``), none inside a
        dropped block."""
        live = {group.name: group.channels for group in self.live_groups(dropped)}
        return PrunePlan(keep={name: count for name, count in keep.items()
                               if name in live and count < live[name]},
                         drop_blocks=sorted(dropped), round_to=self.round_to)

    def scaled(self, plan: PrunePlan, factor: float) -> PrunePlan:
        """``plan`` with every surviving group's width times ``factor``, on the space's
        grid (a multiple of ``round_to`` or the full width, never under the floor); the
        same blocks dropped."""
        keep = {group.name: group.keep_for_units(group.units_for_keep(
                    math.floor(plan.keep.get(group.name, group.channels) * factor)))
                for group in self.live_groups(plan.drop_blocks)}
        return self.to_plan(keep, plan.drop_blocks)

    def params_for(self, keep: dict[str, int], dropped: Sequence[str]) -> dict[str, Any]:
        """The trial parameters that reproduce a plan (as closely as the space allows);
        in a conditional space none for groups inside dropped blocks (``suggest`` does not
        ask for them), in a fixed one their full width."""
        params: dict[str, Any] = {}
        if self.per_stage:
            for stage in self.stages():
                members = [g for g in self.groups if g.stage == stage]
                ratio = sum(keep.get(g.name, g.channels) / g.channels for g in members)
                params[RATIO_PREFIX + stage] = max(self.min_keep_ratio,
                                                   min(1.0, ratio / len(members)))
        else:
            for group in self.asked_groups([name for name in dropped if name in self.blocks]):
                params[KEEP_PREFIX + group.name] = group.units_for_keep(
                    keep.get(group.name, group.channels))
        for name in self.blocks:
            params[DROP_PREFIX + name] = name in dropped
        return params
