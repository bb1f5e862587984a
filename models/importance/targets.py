"""What the scorers look at: the convolutions of each prunable group and the removable blocks.

A prunable group is named by its root convolution; Torch-Pruning's dependency
graph tells which other convolutions have their OUTPUT channels coupled to it
(a ResNet stage's residual stream couples the stem or downsample conv with the
last conv of every block). Each such member is observed after its BatchNorm,
and its channels are mapped back to the root's channel indices.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from core.errors import InvalidSpecError
from models.groups import build_dependency_graph, prunable_groups, removable_blocks


@dataclass
class MemberLayer:
    """One convolution whose output channels belong to a prunable group.

    Attributes:
        name: qualified name of the convolution.
        observed_name: qualified name of the module whose output is scored
            (the BatchNorm right after the conv, else the conv itself).
        observed: that module.
        member_channels: channel positions in this layer's output.
        root_channels: the root convolution's channel for each of those positions.
    """

    name: str
    observed_name: str
    observed: nn.Module
    member_channels: Tensor
    root_channels: Tensor


@dataclass
class GroupLayers:
    """A prunable group as the scorers see it: its channel count and member layers."""

    name: str
    channels: int
    members: list[MemberLayer] = field(default_factory=list)


@dataclass
class ScoringTargets:
    """Everything a scorer scores, resolved against one model instance.

    Attributes:
        groups: group name -> its layers, in network order.
        blocks: removable block name -> block module, in network order.
        block_layers: block name -> the observed layers (BN or conv) inside it,
            whether or not they belong to a listed group.
        dependency_graph: the Torch-Pruning graph the groups come from.
    """

    groups: dict[str, GroupLayers]
    blocks: dict[str, nn.Module]
    block_layers: dict[str, list[tuple[str, nn.Module]]]
    dependency_graph: Any

    def observed_layers(self) -> dict[str, nn.Module]:
        """Every module whose output a scorer observes, by qualified name, without repeats."""
        layers: dict[str, nn.Module] = {}
        for group in self.groups.values():
            for member in group.members:
                layers[member.observed_name] = member.observed
        for observed in self.block_layers.values():
            layers.update(observed)
        return layers


def _names(items: Iterable[Any] | None) -> list[str] | None:
    if items is None:
        return None
    return [item if isinstance(item, str) else item.name for item in items]


def default_group_names(model: nn.Module, example_input: Tensor) -> list[str]:
    """The names of the model's prunable groups, as ``models.plan.prunable_groups`` sees them."""
    return [group.name for group in prunable_groups(model, example_input)]


def default_block_names(model: nn.Module, example_input: Tensor) -> list[str]:
    """The names of the model's removable blocks, as ``models.plan.removable_blocks`` sees them."""
    return [block.name for block in removable_blocks(model, example_input)]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside (BatchNorm statistics untouched); every module's mode is restored."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.train(training)


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients inside; the previous state is restored afterwards."""
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    with eval_mode(model):
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        try:
            yield model
        finally:
            for parameter, flag in flags:
                parameter.requires_grad_(flag)


def _observed_after(graph: Any, conv: nn.Module) -> nn.Module:
    """The BatchNorm that directly consumes ``conv``'s output, else ``conv`` itself."""
    node = graph.module2node.get(conv)
    if node is not None and len(node.outputs) == 1:
        follower = node.outputs[0].module
        if isinstance(follower, nn.modules.batchnorm._BatchNorm):
            return follower
    return conv


def resolve_targets(model: nn.Module, example_input: Tensor,
                    groups: Sequence[Any] | None = None,
                    blocks: Sequence[Any] | None = None) -> ScoringTargets:
    """Find the layers behind each group and block name.

    Args:
        model: the network (left unchanged; it is run once in eval mode).
        example_input: one input batch of the right shape.
        groups: ``GroupInfo`` objects or root-conv names; every prunable group when None.
        blocks: ``BlockInfo`` objects or block names; every removable block when None.

    Returns:
        The resolved targets.

    Raises:
        InvalidSpecError: a name that is not a convolution or a module of the model.
    """
    group_names = _names(groups)
    block_names = _names(blocks)
    if group_names is None:
        group_names = default_group_names(model, example_input)
    if block_names is None:
        block_names = default_block_names(model, example_input)
    modules = dict(model.named_modules())
    names = {id(module): name for name, module in modules.items()}
    graph = build_dependency_graph(model, example_input)

    resolved: dict[str, GroupLayers] = {}
    for group_name in group_names:
        root = modules.get(group_name)
        if not isinstance(root, nn.modules.conv._ConvNd):
            raise InvalidSpecError(f"group {group_name!r} is not a convolution of the model; "
                                   "use the names from models.plan.prunable_groups")
        channels = root.weight.shape[0]
        group = graph.get_pruning_group(root, tp.prune_conv_out_channels,
                                        idxs=list(range(channels)))
        layers = GroupLayers(group_name, channels)
        for item in group.items:
            module = item.dep.target.module
            if not isinstance(module, nn.modules.conv._ConvNd):
                continue
            if not graph.is_out_channel_pruning_fn(item.dep.handler):
                continue
            if any(index is None for index in item.root_idxs):
                continue
            observed = _observed_after(graph, module)
            layers.members.append(MemberLayer(
                name=names[id(module)],
                observed_name=names[id(observed)],
                observed=observed,
                member_channels=torch.tensor([int(index) for index in item.idxs]),
                root_channels=torch.tensor([int(index) for index in item.root_idxs]),
            ))
        resolved[group_name] = layers

    block_modules: dict[str, nn.Module] = {}
    block_layers: dict[str, list[tuple[str, nn.Module]]] = {}
    for block_name in block_names:
        block = modules.get(block_name)
        if block is None or block is model:
            raise InvalidSpecError(f"block {block_name!r} is not a module of the model; "
                                   "use the names from models.plan.removable_blocks")
        block_modules[block_name] = block
        observed_here: list[tuple[str, nn.Module]] = []
        for module in block.modules():
            if isinstance(module, nn.modules.conv._ConvNd):
                observed = _observed_after(graph, module)
                observed_here.append((names[id(observed)], observed))
        block_layers[block_name] = observed_here
    return ScoringTargets(resolved, block_modules, block_layers, graph)
