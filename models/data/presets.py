"""Preprocessing: each dataset's preset, a spec's overrides, and the transforms they make.

A ``Preprocessing`` says how an image becomes the network's input (resize, centre
crop, scale to [0, 1], normalise, gray repeated to 3 channels or kept at 1) and how
training augments it (crop of a zero-padded image, RandomResizedCrop, horizontal
flip). Two pipelines carry it out with the same arithmetic:

* images held in memory as one tensor are augmented in batches on the device they
  live on (``augment_batch``), then finished there (``finish_batch``);
* image files are decoded, resized, cropped and augmented with PIL in loader
  processes, travel as uint8 and are finished on the device (``file_transform``,
  then ``finish_batch``).

``to_metadata`` is what the pruned checkpoint records; ``preprocess_image`` is the
reference recipe a user follows with that metadata.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional

from core.catalog import DATASETS, NORMALIZATIONS
from core.errors import InvalidSpecError
from models.data.file_transforms import RESIZED_CROP_RATIO, RESIZED_CROP_SCALE, FileTransform

__all__ = ["Preprocessing", "preprocess_image", "resolve_preprocessing"]

#: ImageFolder evaluation keeps the centre 87.5% (224 of 256), as torchvision's recipes do.
CENTRE_CROP_FRACTION = 0.875


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network's input, and how training augments it.

    Attributes:
        image_size: side of the square input.
        channels: channels the network takes (gray is repeated up to it).
        source_channels: 1 for grayscale data, 3 for RGB.
        mean: per source channel, of pixels scaled to [0, 1].
        std: per source channel.
        normalization: the statistics' name (``custom`` for user-set values).
        augmentation: ``pad_crop``, ``random_resized_crop`` or ``none``.
        flip: random horizontal flip in training.
        padding: zero padding of ``pad_crop``, in pixels per side.
        resize: evaluation of image files: shorter side resized to this before the
            centre crop; None resizes the whole image to ``image_size`` square.
    """

    image_size: int
    channels: int
    source_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalization: str
    augmentation: str
    flip: bool
    padding: int
    resize: int | None = None

    def to_metadata(self) -> dict[str, Any]:
        """What a user needs to feed the network one image (JSON-ready).

        Keys: ``input_size`` [h, w], ``channels`` of the network input, ``color``
        (``grayscale``: read the image as one gray channel and repeat it to
        ``channels``; ``RGB``), ``channel_order``, ``layout``, ``resize`` (an int:
        shorter side; [h, w]: the whole image), ``crop`` (centre crop side),
        ``interpolation``, ``scale`` (pixel values are divided by it), ``mean`` and
        ``std`` per network-input channel, and the training ``augmentation``.
        """
        size = self.image_size
        repeat = self.channels // self.source_channels
        return {
            "input_size": [size, size],
            "channels": self.channels,
            "color": "grayscale" if self.source_channels == 1 else "RGB",
            "channel_order": "gray" if self.channels == 1 else "RGB",
            "layout": "NCHW",
            "resize": self.resize if self.resize is not None else [size, size],
            "crop": size,
            "interpolation": "bilinear",
            "scale": 255,
            "mean": list(self.mean) * repeat,
            "std": list(self.std) * repeat,
            "normalization": self.normalization,
            "augmentation": {"kind": self.augmentation, "flip": self.flip,
                             "padding": self.padding if self.augmentation == "pad_crop"
                             else None},
        }

    # ---- tensors in memory: batched, on their device ------------------------------------

    def augment_batch(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Random training augmentation of a float batch ``(N, C, H, W)`` in [0, 1],
        computed where the batch lives with ``generator`` (on the same device)."""
        if self.augmentation == "pad_crop":
            images = _random_pad_crop(images, self.padding, generator)
        elif self.augmentation == "random_resized_crop":
            images = _random_resized_crop(images, generator)
        if self.flip:
            flip = torch.rand(images.shape[0], generator=generator,
                              device=images.device) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(3), images)
        return images

    def finish_batch(self, images: Tensor) -> Tensor:
        """uint8 pixels (or floats already in [0, 1]) -> normalised network input."""
        if images.dtype == torch.uint8:
            images = images.float().div_(255)
        mean, std = _statistics(self.mean, self.std, images.device, images.dtype)
        images = (images - mean) / std
        if self.channels != self.source_channels:
            images = images.repeat(1, self.channels // self.source_channels, 1, 1)
        return images

    # ---- image files: PIL, in loader processes --------------------------------------------

    def file_transform(self, train: bool) -> FileTransform:
        """PIL image (and a ``random.Random`` for the sample) -> uint8 tensor ``(C, H, W)``:
        training augmentation, or the evaluation resize and centre crop (``finish_batch``
        does the rest)."""
        return FileTransform(self, train)


@functools.lru_cache(maxsize=32)
def _statistics(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
                dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Mean and std as ``(1, C, 1, 1)`` tensors on ``device``, made once (not a copy to the
    GPU for every batch)."""
    def shaped(values: tuple[float, ...]) -> Tensor:
        return torch.tensor(values, dtype=dtype, device=device)[None, :, None, None]

    return shaped(mean), shaped(std)


def _random_pad_crop(images: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Each image cut at a random offset out of itself padded with zeros (black)."""
    count, _, height, width = images.shape
    padded = functional.pad(images, (padding, padding, padding, padding))
    device = images.device
    top = torch.randint(0, 2 * padding + 1, (count,), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (count,), generator=generator, device=device)
    rows = top[:, None] + torch.arange(height, device=device)
    columns = left[:, None] + torch.arange(width, device=device)
    batch = torch.arange(count, device=device)[:, None, None]
    # Advanced indexing puts the indexed dimensions first: (N, H, W, C).
    cut = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], columns[:, None, :]]
    return cut.permute(0, 3, 1, 2).contiguous()


def _random_resized_crop(images: Tensor, generator: torch.Generator) -> Tensor:
    """RandomResizedCrop for a whole batch: a random box per image (area and aspect
    ratio drawn as torchvision draws them), resampled bilinearly to the full size."""
    count = images.shape[0]
    device = images.device

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(count, generator=generator, device=device)

    area = uniform(*RESIZED_CROP_SCALE)
    ratio = torch.exp(uniform(math.log(RESIZED_CROP_RATIO[0]), math.log(RESIZED_CROP_RATIO[1])))
    width = torch.sqrt(area * ratio).clamp(max=1.0)   # fractions of the image's sides
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    centre_x = (1 - width) * (2 * uniform(0, 1) - 1)  # box inside the image, in [-1, 1]
    centre_y = (1 - height) * (2 * uniform(0, 1) - 1)
    theta = torch.zeros(count, 2, 3, device=device, dtype=images.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = width, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    grid = functional.affine_grid(theta, list(images.shape), align_corners=False)
    return functional.grid_sample(images, grid, mode="bilinear", align_corners=False)


def resolve_preprocessing(dataset: str, image_size: int, overrides: Any = None) -> Preprocessing:
    """The dataset's preset with a spec's ``dataset.preprocessing`` applied.

    Args:
        dataset: a ``core.catalog.DATASETS`` name.
        image_size: side of the network input.
        overrides: a ``core.spec.PreprocessingSpec`` (or anything with its fields);
            None takes the preset whole.

    Raises:
        InvalidSpecError: one channel kept for RGB data, or statistics that do not
            match the data's channels.
    """
    info = DATASETS[dataset]

    def chosen(name: str, preset: Any) -> Any:
        value = getattr(overrides, name, None) if overrides is not None else None
        return preset if value is None else value

    normalization = chosen("normalization", info.normalization)
    mean_given = getattr(overrides, "mean", None) if overrides is not None else None
    if mean_given is not None:
        normalization = "custom"
        mean = tuple(float(v) for v in mean_given)
        std = tuple(float(v) for v in overrides.std)
    elif normalization == "custom":
        raise InvalidSpecError("normalization 'custom' needs mean and std")
    else:
        mean, std = NORMALIZATIONS[normalization]
    source = info.channels
    if len(mean) == 1 and source == 3:
        mean, std = mean * 3, std * 3
    elif len(mean) == 3 and source == 1:
        # RGB statistics on gray data: the gray channel is repeated, so average them.
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    if len(mean) != source:
        raise InvalidSpecError(f"mean and std need 1 or {source} values for {dataset!r}")
    channels = chosen("channels", 3)
    if channels == 1 and source != 1:
        raise InvalidSpecError(f"one input channel is for grayscale data; {dataset!r} is RGB")
    resize = chosen("resize", None)
    if resize is None and info.native_size is None:
        resize = round(image_size / CENTRE_CROP_FRACTION)
    return Preprocessing(
        image_size=image_size, channels=channels, source_channels=source, mean=mean, std=std,
        normalization=normalization, augmentation=chosen("augmentation", info.augmentation),
        flip=chosen("flip", info.flip), padding=chosen("padding", max(1, round(image_size / 8))),
        resize=resize)


def preprocess_image(image: Any, metadata: dict[str, Any]) -> Tensor:
    """The reference recipe: one PIL image -> the network input ``(1, C, H, W)``, as a
    pruned checkpoint's ``preprocessing`` metadata says (README, "Feeding one image").

    Args:
        image: a ``PIL.Image`` of any mode and size.
        metadata: ``load_pruned(path).topiary_metadata["preprocessing"]``.
    """
    from torchvision import transforms

    recipe = transforms.Compose([
        transforms.Resize(metadata["resize"]),
        transforms.CenterCrop(metadata["crop"]),
        transforms.ToTensor(),
    ])
    gray = metadata["color"] == "grayscale"
    tensor = recipe(image.convert("L" if gray else "RGB"))
    if gray:
        tensor = tensor.repeat(metadata["channels"], 1, 1)
    normalise = transforms.Normalize(metadata["mean"], metadata["std"])
    return normalise(tensor).unsqueeze(0)
