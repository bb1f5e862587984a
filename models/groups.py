"""The search space of a network: its prunable channel groups and removable blocks.

A *group* is a set of layers whose channels Torch-Pruning's dependency graph
must remove together (a conv, its BatchNorm, the next conv's inputs, every conv
feeding the same residual add, a depthwise conv and its producer). A group is
named after its *root*: the first ``nn.Conv2d`` in ``model.named_modules()``
order among the convs whose output channels the group prunes. Names always
refer to the original, unpruned network.

Stages (``GroupInfo.stage``, ``BlockInfo.stage``) are coarse labels for
per-stage search spaces, derived from the module tree and the spatial size of
activations on the example input:

* a top-level child whose sub-modules all produce one resolution is one stage,
  labelled by its name (``layer2`` in CIFAR and torchvision ResNets, ``conv1``
  for a stem conv);
* a top-level child that spans several resolutions (``features`` in VGG and
  MobileNetV2) is cut where the output resolution of its children changes, each
  piece labelled by its first child (``features.3``, ``features.7``, ...);
* a group takes the stage most of its output-pruned convs lie in (ties: the
  earliest), so a ResNet stem conv that is coupled to ``layer1``'s residual
  stream belongs to ``layer1``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from models.architectures import residual_blocks

__all__ = [
    "BlockInfo",
    "GroupInfo",
    "build_dependency_graph",
    "final_classifier",
    "min_keep_for",
    "prunable_groups",
    "removable_blocks",
]


@dataclass
class GroupInfo:
    """One prunable channel group: a dimension of the search space.

    Attributes:
        name: qualified name of the group's root conv (see the module docstring).
        channels: the root conv's original output channels.
        min_keep: the fewest channels a plan should keep (a search-space bound;
            ``apply_plan`` itself accepts anything from 1).
        coupled: qualified names of every layer in the group, in network order.
        stage: coarse stage label (see the module docstring).
        block: the removable residual block that contains the root conv, or None.
        pruned_convs: the convs whose output channels the group prunes, in
            network order (the first one is ``name``).
    """

    name: str
    channels: int
    min_keep: int
    coupled: list[str]
    stage: str
    block: str | None = None
    pruned_convs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BlockInfo:
    """One residual block that can be replaced by an identity.

    Attributes:
        name: qualified module name of the block.
        stage: coarse stage label (see the module docstring).
        channels: the block's input (= output) channels.
    """

    name: str
    stage: str
    channels: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def min_keep_for(channels: int, round_to: int = 1, min_keep_ratio: float = 0.1) -> int:
    """The fewest channels of a group a search may keep.

    ``max(round_to, ceil(channels * min_keep_ratio))`` rounded up to a multiple of
    ``round_to``, and never more than ``channels``.
    """
    round_to = max(1, int(round_to))
    floor = math.ceil(channels * min_keep_ratio)
    floor = math.ceil(floor / round_to) * round_to
    return min(channels, max(round_to, floor))


def final_classifier(model: nn.Module) -> nn.Linear | None:
    """The network's last ``nn.Linear`` (its classifier head), never pruned."""
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    return linears[-1] if linears else None


def _model_device(model: nn.Module) -> torch.device:
    tensor: Tensor | None = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for tracing (BatchNorm statistics untouched; batch 1 works), then restored."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.train(training)


def build_dependency_graph(model: nn.Module, example_input: Tensor) -> tp.DependencyGraph:
    """Trace ``model`` on ``example_input`` (moved to the model's device) without side effects."""
    example = example_input.to(_model_device(model))
    with eval_mode(model), torch.enable_grad():
        return tp.DependencyGraph().build_dependency(model, example, verbose=False)


def _output_sizes(model: nn.Module, example_input: Tensor,
                  modules: dict[str, nn.Module]) -> dict[str, tuple[int, ...] | None]:
    """Shape of each named module's output (None when not a tensor) on one forward pass."""
    shapes: dict[str, tuple[int, ...] | None] = {}
    handles = []
    for name, module in modules.items():
        def hook(_module: nn.Module, _inputs: Any, output: Any, name: str = name) -> None:
            shapes.setdefault(name, tuple(output.shape) if isinstance(output, Tensor) else None)
        handles.append(module.register_forward_hook(hook))
    try:
        with eval_mode(model), torch.no_grad():
            model(example_input.to(_model_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def _stage_labels(model: nn.Module, example_input: Tensor) -> dict[str, str]:
    """Stage label of every top-level child and of every child of a top-level child."""
    second_level = {
        f"{top}.{child}": module
        for top, parent in model.named_children()
        for child, module in parent.named_children()
    }
    shapes = _output_sizes(model, example_input, second_level)
    labels: dict[str, str] = {}
    for top, parent in model.named_children():
        labels[top] = top
        children = [f"{top}.{child}" for child, _ in parent.named_children()]
        spatial = {name: shape[2:] for name in children
                   if (shape := shapes.get(name)) is not None and len(shape) == 4}
        if len(set(spatial.values())) <= 1:
            labels.update({name: top for name in children})
            continue
        label, size = children[0], None
        for name in children:
            if name in spatial and spatial[name] != size:
                if size is not None:
                    label = name
                size = spatial[name]
            labels[name] = label
    return labels


def _stage_of(name: str, labels: dict[str, str]) -> str:
    parts = name.split(".")
    return labels.get(".".join(parts[:2])) or labels.get(parts[0]) or parts[0]


def _removable_block_names(model: nn.Module, example_input: Tensor) -> dict[str, int]:
    """Residual blocks whose input and output shapes match: name -> channels."""
    candidates = residual_blocks(model)
    inputs: dict[str, tuple[int, ...]] = {}
    outputs: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, block in candidates.items():
        def hook(_module: nn.Module, args: Any, output: Any, name: str = name) -> None:
            if args and isinstance(args[0], Tensor) and isinstance(output, Tensor):
                inputs.setdefault(name, tuple(args[0].shape))
                outputs.setdefault(name, tuple(output.shape))
        handles.append(block.register_forward_hook(hook))
    try:
        with eval_mode(model), torch.no_grad():
            model(example_input.to(_model_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    return {name: inputs[name][1] for name in candidates
            if name in inputs and inputs[name] == outputs[name]}


def removable_blocks(model: nn.Module, example_input: Tensor) -> list[BlockInfo]:
    """Residual blocks that can be replaced by ``nn.Identity``, in network order.

    A block qualifies when ``models.architectures.residual_blocks`` lists it (an
    identity shortcut) and its input and output shapes match on ``example_input``.

    Args:
        model: the network (unchanged; traced in eval mode).
        example_input: a batch of the input size the network will see.
    """
    labels = _stage_labels(model, example_input)
    return [BlockInfo(name=name, stage=_stage_of(name, labels), channels=channels)
            for name, channels in _removable_block_names(model, example_input).items()]


def _enclosing_block(name: str, blocks: list[str]) -> str | None:
    inside = [block for block in blocks if name.startswith(block + ".")]
    return max(inside, key=len) if inside else None


def prunable_groups(model: nn.Module, example_input: Tensor, round_to: int = 1,
                    min_keep_ratio: float = 0.1,
                    graph: tp.DependencyGraph | None = None) -> list[GroupInfo]:
    """Describe the channel search space from Torch-Pruning's dependency graph.

    Every group rooted at an ``nn.Conv2d`` is listed once, in network order of
    its root; the final ``nn.Linear`` classifier is never pruned. Depthwise
    convs are part of their producer's group, never a group of their own.

    Args:
        model: the network (unchanged; traced in eval mode).
        example_input: a batch of the input size the network will see.
        round_to: channel multiple used for ``min_keep``.
        min_keep_ratio: fraction of a group's channels a search must keep at least.
        graph: ``build_dependency_graph(model, example_input)`` when the caller has it.

    Returns:
        one ``GroupInfo`` per prunable group.
    """
    order = {name: index for index, (name, _) in enumerate(model.named_modules())}
    names = {module: name for name, module in model.named_modules()}
    classifier = final_classifier(model)
    graph = graph or build_dependency_graph(model, example_input)
    labels = _stage_labels(model, example_input)
    blocks = list(_removable_block_names(model, example_input))
    ignored = [classifier] if classifier is not None else []

    groups = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d]):
        coupled: set[str] = set()
        pruned_convs: set[str] = set()
        for dependency, _ in group:
            module = dependency.target.module
            if not isinstance(module, nn.Module) or module not in names:
                continue
            coupled.add(names[module])
            if isinstance(module, nn.Conv2d) and graph.is_out_channel_pruning_fn(
                    dependency.handler):
                pruned_convs.add(names[module])
        convs = sorted(pruned_convs, key=order.__getitem__)
        if not convs:
            continue
        root = convs[0]
        stages = Counter(_stage_of(conv, labels) for conv in convs)
        top = max(stages.values())
        stage = next(_stage_of(conv, labels) for conv in convs
                     if stages[_stage_of(conv, labels)] == top)
        channels = int(model.get_submodule(root).out_channels)  # type: ignore[arg-type]
        groups.append(GroupInfo(
            name=root,
            channels=channels,
            min_keep=min_keep_for(channels, round_to, min_keep_ratio),
            coupled=sorted(coupled, key=order.__getitem__),
            stage=stage,
            block=_enclosing_block(root, blocks),
            pruned_convs=convs,
        ))
    return sorted(groups, key=lambda info: order[info.name])
