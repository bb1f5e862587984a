"""Small networks that tests build where the built-in architectures lack a feature."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ChannelScale", "ScaledNet"]


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
