"""search.channel_importance: which channels a pruned group keeps."""

from __future__ import annotations

import copy

import torch

from models.architectures import build_model
from models.importance import ImportanceScores
from models.plan import PrunePlan, apply_plan, prunable_groups
from search.objective import channel_chooser

GROUP = "layer3.0.conv1"  # a conv inside a block: its output channels are its own group
KEEP = 16


def _pruned_rows(model: torch.nn.Module, factory, x: torch.Tensor) -> list[int]:  # type: ignore[no-untyped-def]
    """Indices of the original filters of GROUP that survive pruning to KEEP channels."""
    original = dict(model.named_modules())[GROUP].weight.detach()
    pruned_model = copy.deepcopy(model)
    apply_plan(pruned_model, PrunePlan(keep={GROUP: KEEP}), x,
               importance=factory(pruned_model) if factory else None)
    kept = dict(pruned_model.named_modules())[GROUP].weight.detach()
    return sorted(int(torch.cdist(row.flatten()[None], original.flatten(1)).argmin())
                  for row in kept)


def test_magnitude_keeps_the_largest_filters_and_a_scorer_keeps_its_best() -> None:
    torch.manual_seed(0)
    model = build_model("cifar_resnet20").eval()
    x = torch.zeros(1, 3, 16, 16)
    groups = {g.name: g for g in prunable_groups(model, x)}
    channels = groups[GROUP].channels
    with torch.no_grad():  # filters of clearly different norms, in a shuffled order
        scale = torch.randperm(channels).float().add(1).mul(10)
        dict(model.named_modules())[GROUP].weight.mul_(scale.view(-1, 1, 1, 1))
    # Scores that favour the filters with the SMALLEST norms: the opposite of magnitude.
    norms = dict(model.named_modules())[GROUP].weight.detach().abs().flatten(1).sum(1)
    scores = ImportanceScores("pls", {GROUP: -norms}, {GROUP: 0.0}, {}, 0.0)

    def never(method: str) -> ImportanceScores:
        raise AssertionError(f"magnitude needs no scores, {method} asked for")

    assert channel_chooser("magnitude", never) is None
    by_magnitude = _pruned_rows(model, None, x)
    by_scores = _pruned_rows(model, channel_chooser("pls", lambda method: scores), x)

    assert by_scores == sorted(norms.argsort()[:KEEP].tolist())  # the scorer's 16 best
    assert by_magnitude == sorted(norms.argsort(descending=True)[:KEEP].tolist())
