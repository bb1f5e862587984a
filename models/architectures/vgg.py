"""VGG with BatchNorm, CIFAR variant: global average pooling and one linear head,
so inputs smaller than 32x32 work too."""

from __future__ import annotations

from torch import Tensor, nn

CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class CifarVGG(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for item in CONFIGS[depth]:
            if item == "M":
                # ceil_mode keeps a 1x1 map at 1x1, so 16x16 inputs survive five poolings.
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                continue
            assert isinstance(item, int)
            layers += [nn.Conv2d(in_channels, item, 3, padding=1, bias=False),
                       nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
            in_channels = item
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))
