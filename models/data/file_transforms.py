"""One image file's preprocessing in a loader process: PIL image -> uint8 tensor ``(C, H, W)``.

The deterministic part (resize, centre crop) is torchvision's, as in the reference recipe
users follow (``preprocess_image``). The random part (RandomResizedCrop's box, the offset
of a crop out of the zero-padded image, the horizontal flip) is drawn from a
``random.Random`` seeded for the sample and applied with PIL and numpy. torchvision's
random transforms draw from torch's global generator, which would have to be forked and
seeded around every sample to keep results independent of the loader-worker count: that
costs more CPU than decoding a small PNG.

The draws follow torchvision's: ``RandomResizedCrop.get_params`` (ten tries at an area and
a log-uniform aspect ratio, then the centre crop clamped to the ratio range),
``RandomCrop(padding=p)`` (uniform offsets in ``[0, 2p]``), ``RandomHorizontalFlip``.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["RESIZED_CROP_RATIO", "RESIZED_CROP_SCALE", "FileTransform", "resized_crop_box"]

#: RandomResizedCrop's area range and aspect-ratio range (torchvision's defaults).
RESIZED_CROP_SCALE = (0.08, 1.0)
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)


def resized_crop_box(width: int, height: int, scale: tuple[float, float],
                     ratio: tuple[float, float], rng: random.Random) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box ``(left, top, box_width, box_height)``, drawn as
    ``torchvision.transforms.RandomResizedCrop.get_params`` draws it."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        box_width = int(round(math.sqrt(target_area * aspect)))
        box_height = int(round(math.sqrt(target_area / aspect)))
        if 0 < box_width <= width and 0 < box_height <= height:
            return (rng.randint(0, width - box_width), rng.randint(0, height - box_height),
                    box_width, box_height)
    aspect = width / height  # fallback: the centre crop, its ratio clamped to the range
    if aspect < min(ratio):
        box_width, box_height = width, int(round(width / min(ratio)))
    elif aspect > max(ratio):
        box_width, box_height = int(round(height * max(ratio))), height
    else:
        box_width, box_height = width, height
    return (width - box_width) // 2, (height - box_height) // 2, box_width, box_height


class FileTransform:
    """The training augmentation (``train``) or the evaluation resize and centre crop of one
    PIL image, for a ``models.data.Preprocessing``; ``transform(image, rng)``."""

    def __init__(self, preprocessing: Any, train: bool) -> None:
        from torchvision import transforms

        size = preprocessing.image_size
        self.size = size
        self.resized_crop = train and preprocessing.augmentation == "random_resized_crop"
        self.padding = (preprocessing.padding
                        if train and preprocessing.augmentation == "pad_crop" else 0)
        self.flip = train and preprocessing.flip
        self.deterministic = transforms.Compose([
            transforms.Resize(preprocessing.resize if preprocessing.resize is not None
                              else (size, size)),
            transforms.CenterCrop(size)])

    def __call__(self, image: Any, rng: random.Random | None = None) -> Tensor:
        from PIL import Image

        rng = rng if rng is not None else random.Random()
        if self.resized_crop:
            left, top, width, height = resized_crop_box(
                image.width, image.height, RESIZED_CROP_SCALE, RESIZED_CROP_RATIO, rng)
            image = image.resize((self.size, self.size), Image.Resampling.BILINEAR,
                                 box=(left, top, left + width, top + height))
        else:
            image = self.deterministic(image)
        pixels = np.asarray(image)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if self.padding:
            pixels = _random_pad_crop(pixels, self.padding, rng)
        if self.flip and rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def _random_pad_crop(pixels: np.ndarray, padding: int, rng: random.Random) -> np.ndarray:
    """``(H, W, C)`` cut at a random offset out of itself padded with zeros."""
    height, width = pixels.shape[:2]
    top, left = rng.randint(0, 2 * padding), rng.randint(0, 2 * padding)
    padded = np.zeros((height + 2 * padding, width + 2 * padding, pixels.shape[2]),
                      pixels.dtype)
    padded[padding:padding + height, padding:padding + width] = pixels
    return padded[top:top + height, left:left + width]
