"""Prune plans: how many channels each group keeps and which blocks go, applied for real.

A ``PrunePlan`` is plain data (JSON) that names groups and blocks of the
ORIGINAL network (see ``models.groups``). ``apply_plan`` validates it against
that network, replaces dropped residual blocks by ``nn.Identity`` and removes
channels with Torch-Pruning, so the result is a smaller dense network (no masks).
Rebuilding a pruned model = building the original and applying its plan again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from core.errors import InvalidPlanError, TopiaryError
from models.groups import (
    BlockInfo,
    GroupInfo,
    build_dependency_graph,
    min_keep_for,
    prunable_groups,
    removable_blocks,
)

__all__ = [
    "BlockInfo",
    "GroupInfo",
    "PrunePlan",
    "apply_plan",
    "prunable_groups",
    "removable_blocks",
    "validate_plan",
]


@dataclass
class PrunePlan:
    """Per-group keep counts and dropped residual blocks of one pruned architecture.

    Attributes:
        keep: group name (``GroupInfo.name``) -> output channels kept; a group
            not listed keeps all its channels.
        drop_blocks: qualified names of residual blocks replaced by identity.
        round_to: channel multiple every partial keep count must honour.
    """

    keep: dict[str, int] = field(default_factory=dict)
    drop_blocks: list[str] = field(default_factory=list)
    round_to: int = 1

    @classmethod
    def unpruned(cls) -> PrunePlan:
        """The plan that changes nothing."""
        return cls()

    @classmethod
    def uniform(cls, groups: list[GroupInfo], keep_ratio: float, round_to: int = 1,
                min_keep_ratio: float = 0.1) -> PrunePlan:
        """Keep the same fraction of every group.

        Each count is ``channels * keep_ratio`` rounded to the nearest multiple of
        ``round_to``, at least ``min_keep_for(channels, round_to, min_keep_ratio)``
        and at most ``channels``. Groups that keep everything are left out.

        Raises:
            InvalidPlanError: ``keep_ratio`` outside (0, 1] or ``round_to`` < 1.
        """
        if not 0 < keep_ratio <= 1:
            raise InvalidPlanError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
        if round_to < 1:
            raise InvalidPlanError(f"round_to must be >= 1, got {round_to}")
        keep = {}
        for group in groups:
            wanted = round(group.channels * keep_ratio / round_to) * round_to
            floor = min_keep_for(group.channels, round_to, min_keep_ratio)
            count = min(group.channels, max(floor, wanted))
            if count < group.channels:
                keep[group.name] = count
        return cls(keep=keep, drop_blocks=[], round_to=round_to)

    def is_unpruned(self) -> bool:
        """True when the plan names no group and no block (it changes nothing)."""
        return not self.keep and not self.drop_blocks

    def to_dict(self) -> dict[str, Any]:
        return {
            "keep": {name: int(self.keep[name]) for name in sorted(self.keep)},
            "drop_blocks": sorted(self.drop_blocks),
            "round_to": int(self.round_to),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrunePlan:
        """Read a plan from plain data.

        Raises:
            InvalidPlanError: not a mapping, unknown keys, or values of the wrong type.
        """
        if not isinstance(data, dict):
            raise InvalidPlanError(f"a plan must be a JSON object, got {type(data).__name__}")
        problems = []
        unknown = set(data) - {"keep", "drop_blocks", "round_to"}
        if unknown:
            problems.append(f"unknown keys {sorted(unknown)} (allowed: keep, drop_blocks, "
                            "round_to)")
        keep = data.get("keep") or {}
        if not isinstance(keep, dict) or not all(
                isinstance(name, str) and _is_int(count) for name, count in keep.items()):
            problems.append("'keep' must map group names to integer channel counts")
            keep = {}
        drop_blocks = data.get("drop_blocks") or []
        if not isinstance(drop_blocks, list) or not all(isinstance(b, str) for b in drop_blocks):
            problems.append("'drop_blocks' must be a list of block names")
            drop_blocks = []
        round_to = data.get("round_to", 1)
        if not _is_int(round_to) or round_to < 1:
            problems.append(f"'round_to' must be an integer >= 1, got {round_to!r}")
            round_to = 1
        if problems:
            raise InvalidPlanError("malformed plan: " + "; ".join(problems))
        return cls(keep=dict(keep), drop_blocks=list(drop_blocks), round_to=int(round_to))

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, sorted block names, no whitespace."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> PrunePlan:
        """Parse ``to_json`` output (or any equivalent JSON).

        Raises:
            InvalidPlanError: not valid JSON or not a plan.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidPlanError(f"plan is not valid JSON: {error}") from error
        return cls.from_dict(data)

    def fingerprint(self) -> str:
        """sha256 (hex) of the architecture the plan produces: keep counts and dropped blocks.

        ``round_to`` is left out: it constrains which plans are legal, not what a
        legal plan builds, so two plans with equal counts share measurements.
        """
        architecture = {"keep": self.to_dict()["keep"],
                        "drop_blocks": sorted(set(self.drop_blocks))}
        canonical = json.dumps(architecture, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_plan(plan: PrunePlan, groups: list[GroupInfo], blocks: list[BlockInfo]) -> None:
    """Check a plan against the original network's groups and blocks.

    Raises:
        InvalidPlanError: listing every bad entry and why, in one message.
    """
    by_name = {group.name: group for group in groups}
    removable = {block.name for block in blocks}
    problems = []
    if not _is_int(plan.round_to) or plan.round_to < 1:
        problems.append(f"round_to: must be an integer >= 1, got {plan.round_to!r}")
    round_to = plan.round_to if _is_int(plan.round_to) and plan.round_to >= 1 else 1
    for name, count in plan.keep.items():
        group = by_name.get(name)
        if group is None:
            problems.append(f"keep[{name!r}]: no prunable group has this name "
                            "(names are root convs of the unpruned network)")
        elif not _is_int(count):
            problems.append(f"keep[{name!r}]: must be an integer, got {count!r}")
        elif not 1 <= count <= group.channels:
            problems.append(f"keep[{name!r}] = {count}: must be between 1 and "
                            f"{group.channels} (the group's channels)")
        elif count != group.channels and count % round_to:
            problems.append(f"keep[{name!r}] = {count}: not a multiple of round_to={round_to} "
                            f"(use a multiple or all {group.channels} channels)")
    seen = set()
    for name in plan.drop_blocks:
        if name in seen:
            problems.append(f"drop_blocks: {name!r} listed twice")
        elif name not in removable:
            problems.append(f"drop_blocks: {name!r} is not a removable residual block (it "
                            "must have an identity shortcut and equal input/output shapes)")
        seen.add(name)
    if problems:
        raise InvalidPlanError(f"invalid prune plan ({len(problems)} problem"
                               f"{'s' if len(problems) > 1 else ''}): " + "; ".join(problems))


def _drop_blocks(model: nn.Module, names: list[str]) -> None:
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.Identity())


def _channels_to_remove(importance: tp.importance.Importance, group: Any, channels: int,
                        keep: int, name: str) -> list[int]:
    scores = importance(group)
    if scores is None or len(scores) != channels:
        got = "None" if scores is None else f"{len(scores)} scores"
        raise TopiaryError(f"importance {type(importance).__name__} gave {got} for group "
                           f"{name!r}, expected one score per channel ({channels})")
    scores = torch.nan_to_num(torch.as_tensor(scores, dtype=torch.float64).flatten().cpu(),
                              nan=float("-inf"))
    kept = torch.argsort(scores, descending=True, stable=True)[:keep]
    return sorted(set(range(channels)) - set(kept.tolist()))


def apply_plan(model: nn.Module, plan: PrunePlan, example_input: Tensor,
               importance: tp.importance.Importance | None = None) -> nn.Module:
    """Prune ``model`` IN PLACE as ``plan`` says, and return it.

    Steps: validate the whole plan against the unpruned model; replace dropped
    blocks by ``nn.Identity``; rebuild the dependency graph; for each group with
    a keep count below its channels, score its channels with ``importance``, keep
    the ``keep`` best and remove the others (and everything coupled to them) with
    Torch-Pruning. ``importance`` is called with the full group rooted at the
    group's named conv; when that conv lived in a dropped block, the group's
    first surviving output-pruned conv is the root instead. Groups all of whose
    convs were dropped are skipped.

    Args:
        model: the UNPRUNED network (names in the plan refer to it).
        plan: the plan to apply.
        example_input: a batch of the input size the network will see (tracing
            runs in eval mode; the model's train/eval mode is restored).
        importance: a ``torch_pruning.importance.Importance``; default
            ``GroupMagnitudeImportance(p=1)`` (L1 norm over the group).

    Returns:
        ``model`` itself, pruned.

    Raises:
        InvalidPlanError: the plan does not fit this network (every problem listed).
    """
    groups = prunable_groups(model, example_input, round_to=plan.round_to)
    blocks = removable_blocks(model, example_input)
    validate_plan(plan, groups, blocks)
    if plan.is_unpruned():
        return model
    importance = importance or tp.importance.GroupMagnitudeImportance(p=1)
    # Module objects survive block replacement, so resolve names before dropping.
    modules = dict(model.named_modules())
    dropped = list(dict.fromkeys(plan.drop_blocks))
    _drop_blocks(model, dropped)

    to_prune = [group for group in groups if plan.keep.get(group.name, group.channels)
                < group.channels]
    if not to_prune:
        return model
    graph = build_dependency_graph(model, example_input)

    def alive(name: str) -> bool:
        return not any(name == block or name.startswith(block + ".") for block in dropped)

    for group in to_prune:
        survivors = [conv for conv in group.pruned_convs if alive(conv)]
        if not survivors:
            continue
        root = modules[survivors[0]]
        channels = root.out_channels
        full = graph.get_pruning_group(root, tp.prune_conv_out_channels,
                                       idxs=list(range(channels)))
        remove = _channels_to_remove(importance, full, channels, plan.keep[group.name],
                                     group.name)
        pruning_group = graph.get_pruning_group(root, tp.prune_conv_out_channels,
                                                idxs=remove)
        if not graph.check_pruning_group(pruning_group):
            raise InvalidPlanError(f"keep[{group.name!r}] = {plan.keep[group.name]}: "
                                   "Torch-Pruning refuses to prune this group that far")
        pruning_group.prune()
    return model
