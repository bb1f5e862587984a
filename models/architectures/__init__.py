"""The architecture registry: build a network by name, find its removable blocks."""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from torch import nn

from core.catalog import ARCHITECTURES, PLUGIN_GROUP
from core.errors import InvalidSpecError, UnknownArchitectureError

from .cifar_resnet import BasicBlock as CifarBasicBlock
from .cifar_resnet import CifarResNet
from .torchvision_adapters import build_torchvision
from .vgg import CifarVGG

__all__ = ["build_model", "residual_blocks", "PLUGIN_GROUP"]


Builder = Callable[..., nn.Module]

_BUILDERS: dict[str, Builder] = {
    **{f"cifar_resnet{d}": (lambda d=d, **kw: CifarResNet(d, **kw)) for d in (20, 32, 56, 110)},
    "vgg11_bn": lambda **kw: CifarVGG(11, **kw),
    "vgg16_bn": lambda **kw: CifarVGG(16, **kw),
    **{n: (lambda n=n, **kw: build_torchvision(n, **kw))
       for n in ("resnet18", "resnet34", "resnet50", "mobilenet_v2")},
}


def _plugin_builders() -> dict[str, Builder]:
    return {ep.name: ep.load() for ep in entry_points(group=PLUGIN_GROUP)}


def build_model(arch: str, **arguments: Any) -> nn.Module:
    """Build a freshly initialised network from the registry.

    Args:
        arch: a name from ``core.catalog.ARCHITECTURES`` or an installed plugin.
        **arguments: the builder's keyword arguments (``num_classes``, ...).

    Raises:
        UnknownArchitectureError: the name is in neither the registry nor a plugin.
        InvalidSpecError: an argument the builder does not take.
    """
    builder = _BUILDERS.get(arch) or _plugin_builders().get(arch)
    if builder is None:
        known = ", ".join(sorted(_BUILDERS))
        raise UnknownArchitectureError(f"unknown architecture {arch!r}; known: {known}")
    info = ARCHITECTURES.get(arch)
    if info is not None:
        unknown = set(arguments) - set(info.arguments)
        if unknown:
            raise InvalidSpecError(
                f"architecture {arch!r} takes {sorted(info.arguments)}, not {sorted(unknown)}"
            )
    return builder(**arguments)


def _torchvision_blocks() -> tuple[tuple[type[nn.Module], ...], tuple[type[nn.Module], ...]]:
    """torchvision's residual blocks: ``(ResNet blocks, MobileNetV2 blocks)``; none while
    torchvision is not imported, as no network can hold one then (importing it costs a
    worker seconds, for networks that may not use it)."""
    if "torchvision" not in sys.modules:
        return (), ()
    from torchvision.models.mobilenetv2 import InvertedResidual
    from torchvision.models.resnet import BasicBlock, Bottleneck

    return (BasicBlock, Bottleneck), (InvertedResidual,)


def residual_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Residual blocks whose shortcut is an identity: the candidates for removal.

    Returns:
        qualified module name -> block, in network order.
    """
    resnet_blocks, inverted_residuals = _torchvision_blocks()
    residual_types: tuple[type[nn.Module], ...] = (CifarBasicBlock, *resnet_blocks)
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, inverted_residuals):
            if module.use_res_connect:
                found[name] = module
        elif isinstance(module, residual_types) and getattr(module, "downsample", None) is None:
            found[name] = module
    return found
