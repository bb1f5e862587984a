"""Squeeze-and-excitation attention scores (Hossain, Gong, Shaban, Adv. Intell. Syst. 2024).

A squeeze-and-excitation gate is attached after every observed layer (the
BatchNorm after each prunable convolution, or the convolution when it has no
BatchNorm): squeeze by global mean pooling (or the global standard-deviation
variant), two fully connected layers with reduction ratio ``reduction``, a
sigmoid; the layer's output is multiplied by the excitation. Only the gates are
trained, on the calibration split, with the backbone frozen and its
BatchNorms in eval mode, to minimise the network's cross-entropy plus a small
sparsity term (``sparsity`` times the mean excitation). The sparsity term is
what separates useless channels from useful ones: a channel that does not help
the loss gets no push up from the cross-entropy, so the sparsity term pulls its
gate down, while useful channels are held up. The gates start with every
excitation near ``initial_excitation`` (0.9: the gated network starts close to
the original) and are trained with Adam. Then, on one pass over the
calibration split:

* channel score = mean excitation of the channel (averaged over the member
  layers of a group that couples several convolutions);
* group score = mean of its channel scores;
* block score = mean excitation of the gates on the block's convolutions.

The gates live outside the model and are attached with forward hooks that are
removed afterwards, so the model's weights, modes and outputs are unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional

from core.errors import InvalidSpecError
from models.datasets import DataSplits

from .base import calibration_batches
from .targets import ScoringTargets, frozen_eval

DEFAULT_SETTINGS: dict[str, Any] = {
    "reduction": 4,
    "pooling": "mean",
    "batches": 50,
    "batch_size": 32,
    "learning_rate": 0.05,
    "sparsity": 0.01,
    "initial_excitation": 0.9,
    "seed": 0,
}

_MIN_HIDDEN = 4


class SqueezeExcitationGate(nn.Module):
    """Squeeze (global pooling) -> FC -> ReLU -> FC -> sigmoid: one excitation per channel.

    Args:
        channels: channels of the gated feature map.
        reduction: hidden width = ``max(4, channels // reduction)``.
        pooling: ``mean`` (global average) or ``std`` (global standard deviation).
        initial_excitation: every excitation's value before training, in (0, 1);
            close to 1 so the gated network starts close to the original one.
    """

    def __init__(self, channels: int, reduction: int = 4, pooling: str = "mean",
                 initial_excitation: float = 0.9) -> None:
        super().__init__()
        if pooling not in ("mean", "std"):
            raise InvalidSpecError(f"attention pooling must be 'mean' or 'std', got {pooling!r}")
        if reduction < 1:
            raise InvalidSpecError(f"attention reduction must be >= 1, got {reduction}")
        if not 0.0 < initial_excitation < 1.0:
            raise InvalidSpecError("attention initial_excitation must be in (0, 1), "
                                   f"got {initial_excitation}")
        hidden = max(_MIN_HIDDEN, channels // reduction)
        self.pooling = pooling
        self.squeeze_to_hidden = nn.Linear(channels, hidden)
        self.hidden_to_excitation = nn.Linear(hidden, channels)
        with torch.no_grad():
            self.hidden_to_excitation.weight.mul_(0.1)
            initial_logit = math.log(initial_excitation / (1.0 - initial_excitation))
            self.hidden_to_excitation.bias.fill_(initial_logit)

    def forward(self, features: Tensor) -> Tensor:
        flat = features.flatten(2)
        if self.pooling == "mean":
            squeezed = flat.mean(dim=2)
        else:
            squeezed = flat.std(dim=2, correction=0)
        hidden = functional.relu(self.squeeze_to_hidden(squeezed))
        return torch.sigmoid(self.hidden_to_excitation(hidden))


class _GatedLayers:
    """Gates attached with forward hooks; records the excitations of the current forward pass."""

    def __init__(self, layers: dict[str, nn.Module], settings: dict[str, Any],
                 device: torch.device) -> None:
        self.layers = layers
        self.gates = nn.ModuleDict()
        self.keys = {name: f"gate{index}" for index, name in enumerate(layers)}
        for name, module in layers.items():
            channels = _output_channels(module)
            self.gates[self.keys[name]] = SqueezeExcitationGate(
                channels, settings["reduction"], settings["pooling"],
                settings["initial_excitation"])
        self.gates.to(device)
        self.excitations: dict[str, Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> _GatedLayers:
        for name, module in self.layers.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):  # type: ignore[no-untyped-def]
        gate = self.gates[self.keys[name]]

        def gate_output(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
            excitation = gate(output)
            self.excitations[name] = excitation
            shape = excitation.shape + (1,) * (output.dim() - 2)
            return output * excitation.view(shape)

        return gate_output


def _output_channels(module: nn.Module) -> int:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features
    weight = getattr(module, "weight", None)
    if weight is None:
        raise InvalidSpecError(f"cannot attach an attention gate to {type(module).__name__}")
    return int(weight.shape[0])


def _train_gates(model: nn.Module, gated: _GatedLayers, splits: DataSplits,
                 settings: dict[str, Any], device: torch.device) -> None:
    optimizer = torch.optim.Adam(gated.gates.parameters(), lr=settings["learning_rate"])
    batches = calibration_batches(splits, settings["batch_size"], limit=settings["batches"],
                                  shuffle=True, seed=settings["seed"])
    for images, labels in batches:
        images, labels = images.to(device), labels.to(device)
        gated.excitations.clear()
        loss = functional.cross_entropy(model(images), labels)
        if settings["sparsity"] > 0 and gated.excitations:
            mean_excitation = torch.stack([e.mean() for e in gated.excitations.values()]).mean()
            loss = loss + settings["sparsity"] * mean_excitation
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@torch.no_grad()
def _mean_excitations(model: nn.Module, gated: _GatedLayers, splits: DataSplits,
                      settings: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
    sums: dict[str, Tensor] = {}
    count = 0
    for images, _ in calibration_batches(splits, settings["batch_size"]):
        gated.excitations.clear()
        model(images.to(device))
        for name, excitation in gated.excitations.items():
            total = excitation.sum(dim=0).double().cpu()
            sums[name] = sums[name] + total if name in sums else total
        count += images.shape[0]
    return {name: (total / count).float() for name, total in sums.items()}


def attention_scores(model: nn.Module, splits: DataSplits, targets: ScoringTargets,
                     settings: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, float],
                                                        dict[str, float]]:
    """Train squeeze-and-excitation gates on the frozen model and read their mean excitation.

    Args:
        model: the network; unchanged afterwards.
        splits: the dataset; only its calibration split is used.
        targets: the groups and blocks to score.
        settings: ``DEFAULT_SETTINGS`` with the caller's overrides.

    Returns:
        (channel scores, group scores, block scores).
    """
    device = next(model.parameters()).device
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(settings["seed"])
    try:
        gated = _GatedLayers(targets.observed_layers(), settings, device)
    finally:
        torch.random.set_rng_state(generator_state)
    with frozen_eval(model), gated:
        if settings["batches"] > 0:
            with torch.enable_grad():
                _train_gates(model, gated, splits, settings, device)
        excitation = _mean_excitations(model, gated, splits, settings, device)

    channel: dict[str, Tensor] = {}
    group: dict[str, float] = {}
    for name, layers in targets.groups.items():
        total = torch.zeros(layers.channels)
        counts = torch.zeros(layers.channels)
        for member in layers.members:
            values = excitation[member.observed_name][member.member_channels]
            total.index_add_(0, member.root_channels, values)
            counts.index_add_(0, member.root_channels, torch.ones_like(values))
        channel[name] = total / counts.clamp(min=1)
        group[name] = float(channel[name].mean())
    block = {
        name: float(torch.stack([excitation[layer].mean() for layer, _ in observed]).mean())
        if observed else 0.0
        for name, observed in targets.block_layers.items()
    }
    return channel, group, block
