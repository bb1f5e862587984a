"""What the server can build and load, as plain data (no torch import).

The API process lists and validates architectures and datasets from here
without importing torch; `models.architectures` holds the builders and is
checked against this catalog by the tests. Architectures that installed
packages add through the ``topiary.architectures`` entry-point group are
found from their package metadata, without importing them.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from importlib.metadata import entry_points
from typing import Any

#: Entry-point group through which installed packages add architectures.
PLUGIN_GROUP = "topiary.architectures"


@dataclass(frozen=True)
class ArgumentRule:
    """What one builder argument may be: its type, and its range or its choices.

    Attributes:
        type: ``int`` or ``bool`` (JSON's ``true`` is no int here, nor ``3.0``).
        minimum: smallest allowed int.
        maximum: largest allowed int.
        choices: the only allowed values, when they are few.
    """

    type: str
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[int, ...] | None = None

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, or None when it is."""
        if self.type == "bool":
            return None if isinstance(value, bool) else "must be true or false"
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be an integer"
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))}"
        if self.minimum is not None and value < self.minimum:
            return f"must be at least {self.minimum}"
        if self.maximum is not None and value > self.maximum:
            return f"must be at most {self.maximum}"
        return None


IN_CHANNELS = ArgumentRule("int", choices=(1, 3))
SMALL_INPUT = ArgumentRule("bool")
#: What a plugin's arguments may be, its builder's own rules being unknown here:
#: at most this many, each a JSON scalar (strings up to PLUGIN_STRING_LENGTH).
PLUGIN_ARGUMENTS = 32
PLUGIN_STRING_LENGTH = 200


def plugin_argument_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a plugin's builder argument, or None when it can."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return None if abs(value) <= 2**31 else "must be an integer within +-2**31"
    if isinstance(value, float):
        return None if abs(value) <= 1e12 else "must be a number within +-1e12"
    if isinstance(value, str):
        return (None if len(value) <= PLUGIN_STRING_LENGTH
                else f"must be at most {PLUGIN_STRING_LENGTH} characters")
    return "must be a number, a string, true, false or null (no lists or objects)"


@dataclass(frozen=True)
class ArchitectureInfo:
    """One buildable architecture.

    Attributes:
        name: registry name used in job specs (``model.arch``).
        description: one line for humans.
        arguments: keyword arguments the builder takes, with their defaults
            (unknown, so empty and unchecked, for plugins).
        default_input_size: the image side the architecture was designed for.
        family: ``cifar_resnet``, ``vgg``, ``torchvision``, or ``plugin``.
        argument_rules: the type and range of each argument a spec may set (every
            argument but ``num_classes``, which ``model.num_classes`` sets).
    """

    name: str
    description: str
    arguments: dict[str, Any]
    default_input_size: int
    family: str
    argument_rules: dict[str, ArgumentRule] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Normalisation statistics by name: (mean, std) per channel of pixels scaled to [0, 1].
#: One value serves every channel (gray images, or gray repeated to RGB).
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "centered": ((0.5,), (0.5,)),
}

#: Training augmentations: random crop of a zero-padded image, torchvision's
#: RandomResizedCrop (for photos of any size), or none. A horizontal flip is separate.
AUGMENTATIONS = ("pad_crop", "random_resized_crop", "none")


@dataclass(frozen=True)
class DatasetInfo:
    """One loadable dataset kind, with its preprocessing preset.

    Attributes:
        name: ``dataset.name`` in a job spec.
        description: one line for humans.
        needs_root: whether a folder under ``TOPIARY_DATA_ROOT`` must be given.
        num_classes: fixed class count, or None when it comes from the data.
        default_image_size: input side when the spec gives none.
        native_size: side of the stored images (None: they vary, as in an ImageFolder).
        channels: 1 for grayscale data, 3 for RGB.
        normalization: preset statistics, a key of ``NORMALIZATIONS``.
        augmentation: preset training augmentation, one of ``AUGMENTATIONS``.
        flip: preset random horizontal flip in training (not for digits: a mirrored
            2 is no 2).
        labels: the name of each class, in label order, when the dataset fixes them
            (None: read from the data, as CIFAR's meta file or an ImageFolder's folders).
    """

    name: str
    description: str
    needs_root: bool
    num_classes: int | None
    default_image_size: int
    arguments: dict[str, Any] = field(default_factory=dict)
    native_size: int | None = None
    channels: int = 3
    normalization: str = "cifar"
    augmentation: str = "pad_crop"
    flip: bool = True
    labels: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DIGIT_LABELS = tuple("0123456789")
#: Zalando's names of Fashion-MNIST's labels 0-9 (its README).
FASHION_MNIST_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                        "Shirt", "Sneaker", "Bag", "Ankle boot")


def _cifar_resnet(depth: int) -> ArchitectureInfo:
    return ArchitectureInfo(
        name=f"cifar_resnet{depth}",
        description=f"CIFAR-style ResNet-{depth} (He et al. 2016), 3 stages of basic blocks",
        arguments={"num_classes": 10, "width": 16, "in_channels": 3},
        default_input_size=32,
        family="cifar_resnet",
        # width: channels of the first stage (the last has 4x); 128 is ResNet-18-sized.
        argument_rules={"width": ArgumentRule("int", minimum=4, maximum=128),
                        "in_channels": IN_CHANNELS},
    )


def _vgg(depth: int) -> ArchitectureInfo:
    return ArchitectureInfo(
        name=f"vgg{depth}_bn",
        description=f"VGG-{depth} with BatchNorm, CIFAR variant (global pooling, one linear head)",
        arguments={"num_classes": 10, "in_channels": 3},
        default_input_size=32,
        family="vgg",
        argument_rules={"in_channels": IN_CHANNELS},
    )


def _torchvision(name: str, description: str) -> ArchitectureInfo:
    return ArchitectureInfo(
        name=name,
        description=description,
        arguments={"num_classes": 1000, "small_input": False, "in_channels": 3},
        default_input_size=224,
        family="torchvision",
        argument_rules={"small_input": SMALL_INPUT, "in_channels": IN_CHANNELS},
    )


ARCHITECTURES: dict[str, ArchitectureInfo] = {
    info.name: info
    for info in [
        *(_cifar_resnet(d) for d in (20, 32, 56, 110)),
        _vgg(11),
        _vgg(16),
        _torchvision("resnet18", "torchvision ResNet-18; small_input: 3x3 stem, no max-pool"),
        _torchvision("resnet34", "torchvision ResNet-34; small_input: 3x3 stem, no max-pool"),
        _torchvision("resnet50", "torchvision ResNet-50 (bottleneck blocks); small_input stem"),
        _torchvision("mobilenet_v2", "torchvision MobileNetV2; small_input: stride-1 stem"),
    ]
}

DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo(
            name="digits",
            description="scikit-learn's bundled 8x8 handwritten digits (1,797 images), resized",
            needs_root=False,
            num_classes=10,
            default_image_size=16,
            native_size=8,
            channels=1,
            normalization="centered",
            augmentation="none",
            flip=False,
            labels=DIGIT_LABELS,
        ),
        DatasetInfo(
            name="mnist",
            description="MNIST handwritten digits from the four IDX files (gzipped or not) in "
                        "a folder; 60k train, the official 10k test split",
            needs_root=True,
            num_classes=10,
            default_image_size=28,
            native_size=28,
            channels=1,
            normalization="mnist",
            augmentation="pad_crop",
            flip=False,
            labels=DIGIT_LABELS,
        ),
        DatasetInfo(
            name="fashion_mnist",
            description="Zalando's Fashion-MNIST from the four IDX files (gzipped or not) in a "
                        "folder, e.g. Debian's dataset-fashion-mnist; 60k train, 10k test",
            needs_root=True,
            num_classes=10,
            default_image_size=28,
            native_size=28,
            channels=1,
            normalization="fashion_mnist",
            augmentation="pad_crop",
            flip=True,
            labels=FASHION_MNIST_LABELS,
        ),
        DatasetInfo(
            name="cifar10",
            description="CIFAR-10 from a local folder (torchvision layout, never downloaded)",
            needs_root=True,
            num_classes=10,
            default_image_size=32,
            native_size=32,
        ),
        DatasetInfo(
            name="cifar100",
            description="CIFAR-100 from a local folder (torchvision layout, never downloaded)",
            needs_root=True,
            num_classes=100,
            default_image_size=32,
            native_size=32,
        ),
        DatasetInfo(
            name="imagefolder",
            description="train/ and val/ folders with one sub-folder of images per class "
                        "(torchvision ImageFolder)",
            needs_root=True,
            num_classes=None,
            default_image_size=64,
            normalization="imagenet",
            augmentation="random_resized_crop",
        ),
    ]
}

#: Download formats of the pruned model (``?format=``) and their file suffixes.
CHECKPOINT_FORMATS: dict[str, str] = {
    "safetensors": ".safetensors",
    "onnx": ".onnx",
    "pt2": ".pt2",
    "torchscript": ".pt",
}


PLUGIN_FAMILY = "plugin"


@functools.cache
def plugin_architectures() -> dict[str, ArchitectureInfo]:
    """Architectures of installed plugins (read once per process from package metadata).

    A plugin's builder arguments are not known without importing it, so they
    are not checked at submission; the worker reports a wrong one.
    """
    found = {}
    for point in entry_points(group=PLUGIN_GROUP):
        if point.name in ARCHITECTURES:
            continue  # the built-in one wins, as in models.architectures.build_model
        package = point.dist.name if point.dist is not None else "an installed package"
        found[point.name] = ArchitectureInfo(
            name=point.name, description=f"plugin {point.value} from {package}",
            arguments={}, default_input_size=32, family=PLUGIN_FAMILY)
    return found


def architecture_info(name: str) -> ArchitectureInfo | None:
    """A built-in or plugin architecture by name (None when neither has it)."""
    return ARCHITECTURES.get(name) or plugin_architectures().get(name)


def list_architectures() -> list[dict[str, Any]]:
    """Every buildable architecture as a dict (name, description, arguments, input size)."""
    return [info.to_dict() for info in (*ARCHITECTURES.values(),
                                        *plugin_architectures().values())]


def list_datasets() -> list[dict[str, Any]]:
    """Every loadable dataset kind as a dict."""
    return [info.to_dict() for info in DATASETS.values()]
