"""Stored scores as a Torch-Pruning importance, so ``apply_plan`` keeps the best channels."""

from __future__ import annotations

from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from core.errors import InvalidPlanError

from .base import ImportanceScores


class ScoreImportance(tp.importance.Importance):
    """A ``torch_pruning.importance.Importance`` that returns precomputed channel scores.

    Module identities are mapped to qualified names when it is built, so it
    must be built on the model the scores were computed on, before pruning.
    Dropping blocks does not disturb it (the surviving convs keep their names).

    ``__call__(group)`` looks for a conv of the group whose output channels are
    pruned and whose name has stored scores (normally the group's root), and
    returns those scores in the order of the group's root channels
    (``group[0].root_idxs``).

    Args:
        model: the unpruned network the scores describe.
        scores: the scores, e.g. from ``models.importance.score``.
    """

    def __init__(self, model: nn.Module, scores: ImportanceScores) -> None:
        self.scores = scores
        self._names = {id(module): name for name, module in model.named_modules()}

    def __call__(self, group: Any) -> Tensor:
        graph = getattr(group, "_DG", None)
        root = group[0].dep.target.module
        root_channels = int(root.weight.shape[0])
        for item in group.items:
            module = item.dep.target.module
            name = self._names.get(id(module))
            if name not in self.scores.channel:
                continue
            if graph is not None and not graph.is_out_channel_pruning_fn(item.dep.handler):
                continue
            stored = self.scores.channel[name]
            if len(stored) != module.weight.shape[0]:
                raise InvalidPlanError(
                    f"importance scores of {name!r} cover {len(stored)} channels but the layer "
                    f"has {module.weight.shape[0]}; score the unpruned model and build "
                    "ScoreImportance on it before pruning")
            by_root = torch.full((root_channels,), float("nan"))
            member = torch.as_tensor([int(index) for index in item.idxs])
            roots = torch.as_tensor([int(index) for index in item.root_idxs])
            by_root[roots] = stored[member].float()
            return by_root[[int(index) for index in group[0].root_idxs]]
        root_name = self._names.get(id(root), type(root).__name__)
        raise InvalidPlanError(
            f"no stored {self.scores.method} scores for the group rooted at {root_name!r}; "
            "score every group the plan prunes (or leave groups=None)")
