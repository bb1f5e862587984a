"""A plan's MACs and parameters counted from its widths, without pruning a network.

``count_flops_params`` of a really pruned copy (``models.plan.apply_plan`` then
ptflops) costs about 0.1 s for a CIFAR ResNet-56 on a CPU core, most of it in
Torch-Pruning's dependency graph and tracing; a search that sizes plans by
bisection (``search.projection``) makes dozens of such checks per trial. Both
quantities are simple functions of the widths a plan keeps, so this counts them
from a table built once from the unpruned network:

* from Torch-Pruning's dependency graph, for every group, which layers' output
  and input dimensions it prunes, and by how many entries per channel (one for a
  conv; ``H * W`` for a linear layer after a flatten);
* from one forward pass, the output positions per sample of every conv and linear
  layer (ptflops' ``aten`` convention, ``models.measure``: the MACs of
  convolutions and matrix multiplies, nothing else);
* every parameter's shape, with the dimension each pruning removes entries from.

A layer inside a dropped block counts nothing (the block becomes ``nn.Identity``).
A depthwise conv keeps one input channel per group as its groups shrink with its
channels. Counts agree exactly with pruning and counting for the built-in
architectures (``tests/model_tests/test_plan_count.py``); an unusual layer the table
does not model (a custom module with channel-wise parameters in another
dimension, say) may not, so callers that must be exact confirm the plan they
finally choose with a real count: ``PlanCosts`` counts plans from their widths,
confirms a plan on its pruned network (``PlanCosts.confirm``) and, should the two
ever differ, counts every plan on its pruned network from then on.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from models.groups import build_dependency_graph, eval_mode, prunable_groups
from models.measure import count_flops_params
from models.plan import PrunePlan, apply_plan

__all__ = ["PlanCosts", "PlanCounter"]

log = logging.getLogger(__name__)


@dataclass
class _Layer:
    """One module with parameters or MACs, and how plans shrink it."""

    name: str
    module: nn.Module
    #: (group, entries removed from the output dimension per channel the group loses)
    out_cuts: list[tuple[str, float]] = field(default_factory=list)
    in_cuts: list[tuple[str, float]] = field(default_factory=list)
    positions: int = 0  # output positions per sample of a conv or linear layer
    #: (output, input) features of the unpruned layer (``_features``)
    features: tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.features = _features(self.module)

    def dims(self, removed: dict[str, int]) -> tuple[int, int]:
        """Output and input features after ``removed`` channels of each group."""
        out_dim, in_dim = self.features
        out_dim -= round(sum(removed.get(group, 0) * share for group, share in self.out_cuts))
        in_dim -= round(sum(removed.get(group, 0) * share for group, share in self.in_cuts))
        return out_dim, in_dim

    def count(self, removed: dict[str, int]) -> tuple[int, int]:
        """MACs per sample and parameters of this layer after the cuts."""
        out_dim, in_dim = self.dims(removed)
        module = self.module
        if isinstance(module, nn.Conv2d):
            groups = module.groups
            depthwise = groups > 1 and groups == module.in_channels == module.out_channels
            per_output = 1 if depthwise else in_dim // groups
            kernel = module.kernel_size[0] * module.kernel_size[1]
            bias = out_dim if module.bias is not None else 0
            # ptflops counts a bias's additions as MACs too.
            return (self.positions * (out_dim * per_output * kernel + bias),
                    out_dim * per_output * kernel + bias)
        if isinstance(module, nn.Linear):
            bias = out_dim if module.bias is not None else 0
            return self.positions * (out_dim * in_dim + bias), out_dim * in_dim + bias
        # Channel-wise parameters (BatchNorm, LayerNorm over channels, PReLU): each
        # 1-D parameter has the module's output features; others stay as they are.
        params = 0
        for parameter in module.parameters(recurse=False):
            full = parameter.numel()
            params += out_dim if parameter.dim() == 1 and full == self.features[0] else full
        return 0, params


def _features(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Conv2d):
        return module.out_channels, module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    for attribute in ("num_features", "num_parameters", "normalized_shape"):
        value = getattr(module, attribute, None)
        if isinstance(value, int):
            return value, value
        if isinstance(value, tuple) and value:
            return int(value[-1]), int(value[-1])
    sizes = [parameter.shape[0] for parameter in module.parameters(recurse=False)
             if parameter.dim() == 1]
    return (sizes[0], sizes[0]) if sizes else (0, 0)


class PlanCounter:
    """MACs per sample and parameters of the network a plan would leave.

    Args:
        model: the unpruned network (not modified; traced once in eval mode).
        example_input: a batch of the input size the network will see.
    """

    def __init__(self, model: nn.Module, example_input: Tensor) -> None:
        graph = build_dependency_graph(model, example_input)
        groups = prunable_groups(model, example_input, graph=graph)
        self.channels = {group.name: group.channels for group in groups}
        names = {module: name for name, module in model.named_modules()}
        self._layers = {name: _Layer(name, module) for name, module in model.named_modules()
                        if isinstance(module, nn.Conv2d | nn.Linear)
                        or any(True for _ in module.parameters(recurse=False))}
        for group in groups:
            full = graph.get_pruning_group(model.get_submodule(group.name),
                                           tp.prune_conv_out_channels,
                                           idxs=list(range(group.channels)))
            cuts: dict[tuple[str, bool], float] = {}
            for dependency, idxs in full:
                module = dependency.target.module
                name = names.get(module) if isinstance(module, nn.Module) else None
                if name is None or name not in self._layers:
                    continue
                # A channel-wise layer (BatchNorm) has one dimension: either cut is it.
                outward = (graph.is_out_channel_pruning_fn(dependency.handler)
                           or not isinstance(module, nn.Conv2d | nn.Linear))
                cuts[name, outward] = max(cuts.get((name, outward), 0.0),
                                          len(idxs) / group.channels)
            for (name, outward), share in cuts.items():
                layer = self._layers[name]
                (layer.out_cuts if outward else layer.in_cuts).append((group.name, share))
        self._positions(model, example_input)

    def _positions(self, model: nn.Module, example_input: Tensor) -> None:
        handles = []
        for layer in self._layers.values():
            if not isinstance(layer.module, nn.Conv2d | nn.Linear):
                continue

            def hook(module: nn.Module, _inputs: Any, output: Any, layer: _Layer = layer) -> None:
                if isinstance(output, Tensor) and output.dim() >= 2:
                    shape = output.shape
                    spatial = shape[2:] if isinstance(module, nn.Conv2d) else shape[1:-1]
                    layer.positions = int(torch.Size(spatial).numel())
            handles.append(layer.module.register_forward_hook(hook))
        try:
            device = next((t.device for t in model.parameters()), torch.device("cpu"))
            with eval_mode(model), torch.no_grad():
                model(example_input[:1].to(device))
        finally:
            for handle in handles:
                handle.remove()

    def __call__(self, plan: PrunePlan) -> tuple[int, int]:
        """``(macs, params)`` of ``plan``'s network, as ``count_flops_params`` counts them
        on the really pruned network (see the module docstring for what is modelled)."""
        removed = {name: channels - plan.keep.get(name, channels)
                   for name, channels in self.channels.items()}
        dropped = tuple(block + "." for block in plan.drop_blocks)
        macs = params = 0
        for name, layer in self._layers.items():
            if name in plan.drop_blocks or name.startswith(dropped):
                continue
            layer_macs, layer_params = layer.count(removed)
            macs += layer_macs
            params += layer_params
        return macs, params


class PlanCosts:
    """MACs per sample and parameters of the network a plan leaves, memoised by plan:
    counted from its widths (``PlanCounter``) while ``counting``, else on its really
    pruned network (``count_flops_params`` of a pruned copy).

    A caller that must be exact confirms the plans it settles on (``confirm``); when a
    count differs from the pruned network's, counting stops for good and every count
    made so far is forgotten, so that the caller can size its plans again.

    Args:
        model: the unpruned network (never modified: each check prunes a copy).
        example_input: a batch of its input shape.
        counted: count from the widths; False: every plan is pruned and counted.
    """

    def __init__(self, model: nn.Module, example_input: Tensor, counted: bool = True) -> None:
        self.model = model
        self.example_input = example_input
        self.input_shape = tuple(example_input.shape[1:])
        #: Counts plans from their widths; None: every plan's network is pruned and counted.
        self.counter = PlanCounter(model, example_input) if counted else None
        self._seen: dict[str, tuple[int, int]] = {}

    @property
    def counting(self) -> bool:
        """Whether plans are counted from their widths (no count has been refuted)."""
        return self.counter is not None

    def __call__(self, plan: PrunePlan) -> tuple[int, int]:
        """``(macs, params)`` of the network ``plan`` leaves."""
        key = plan.fingerprint()
        if key not in self._seen:
            self._seen[key] = self.counter(plan) if self.counter is not None \
                else self.pruned(plan)
        return self._seen[key]

    def pruned(self, plan: PrunePlan) -> tuple[int, int]:
        """``(macs, params)`` of ``plan``'s really pruned network (not memoised)."""
        network = apply_plan(copy.deepcopy(self.model), plan, self.example_input)
        macs, params = count_flops_params(network, self.input_shape)
        return int(macs), int(params)

    def confirm(self, plan: PrunePlan) -> bool:
        """Whether ``plan``'s count is its pruned network's (always, when not counting).
        When it is not, counting stops and every count made so far is forgotten."""
        if self.counter is None:
            return True
        counted, real = self(plan), self.pruned(plan)
        if counted == real:
            return True
        log.warning("counting a plan from its widths gave %d MACs and %d parameters where "
                    "its pruned network has %d and %d (a layer models.plan_count does not "
                    "model?); plans are pruned and counted from now on", *counted, *real)
        self.counter = None
        self._seen.clear()
        return False
