"""torchvision ResNets and MobileNetV2 with a class count and a small-input stem."""

from __future__ import annotations

from torch import nn


def build_torchvision(name: str, num_classes: int = 1000, small_input: bool = False,
                      in_channels: int = 3) -> nn.Module:
    """Build a torchvision network with random weights (nothing is downloaded).

    Args:
        name: resnet18, resnet34, resnet50 or mobilenet_v2.
        num_classes: size of the classifier head.
        small_input: for 32x32-class images: ResNets get a 3x3 stride-1 stem and
            no max-pool; MobileNetV2 gets a stride-1 first conv.
        in_channels: input channels (1 for grayscale data kept at one channel).
    """
    # Imported here: torchvision takes seconds to import (its detection ops load
    # torch._dynamo), and a worker needs it only for these networks.
    from torchvision import models as tv

    model = getattr(tv, name)(weights=None, num_classes=num_classes)
    if name.startswith("resnet"):
        stem = (3, 1, 1) if small_input else (7, 2, 3)
        if small_input or in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, *stem, bias=False)
        if small_input:
            model.maxpool = nn.Identity()
    elif name == "mobilenet_v2" and (small_input or in_channels != 3):
        first = model.features[0][0]
        stride = 1 if small_input else 2
        model.features[0][0] = nn.Conv2d(in_channels, first.out_channels, 3, stride, 1,
                                         bias=False)
    return model
