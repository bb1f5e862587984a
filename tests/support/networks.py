"""Small networks that tests build where the built-in architectures lack a feature."""

from __future__ import annotations

import pytest
import torch
from torch import nn

__all__ = ["ChannelScale", "ScaledNet", "unwrapped_scale_warning"]

#: Torch-Pruning warns that it prunes ``ChannelScale.gamma``'s last non-singleton
#: dimension: what the tests of a layer the count does not model rely on.
unwrapped_scale_warning = pytest.mark.filterwarnings(
    "ignore:Unwrapped parameters detected:UserWarning")


class ChannelScale(nn.Module):
    """A learned per-channel scale stored as (1, C, 1, 1): Torch-Pruning prunes its second
    dimension, which the count does not model."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class ScaledNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.scale = ChannelScale(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(self.scale(self.conv1(x))).mean((2, 3)))
