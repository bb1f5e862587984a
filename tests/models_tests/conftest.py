"""Small datasets the model tests write themselves: MNIST-style IDX files and an
ImageFolder of PNGs (nothing installed or downloaded is needed)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest


def write_idx(path: Path, array: np.ndarray, gzipped: bool = True) -> Path:
    """``array`` (uint8) as an IDX file: magic 0x0000 0x08 ndim, big-endian sizes, values."""
    data = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    data += struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    if gzipped:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def mnist_like(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 gray images whose class (0-9) is where a bright bar sits, with noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count).astype(np.uint8)
    images = rng.integers(0, 60, (count, 28, 28)).astype(np.uint8)
    for image, label in zip(images, labels, strict=True):
        image[4 + 2 * label: 6 + 2 * label, 4:24] = 230
    return images, labels


def write_mnist_like(folder: Path, train: int = 240, test: int = 60,
                     gzipped: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, count, seed in (("train", train, 0), ("t10k", test, 1)):
        images, labels = mnist_like(count, seed)
        write_idx(folder / f"{split}-images-idx3-ubyte", images, gzipped)
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels, gzipped)
    return folder


def write_image_folder(root: Path, per_class: int = 6, classes: int = 3) -> Path:
    """train/ and val/ with ``classes`` class folders of PNGs of varied sizes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in range(classes):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for index in range(per_class):
                height, width = int(rng.integers(18, 30)), int(rng.integers(18, 30))
                pixels = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
                pixels[..., label] = np.clip(pixels[..., label].astype(int) + 120, 0, 255)
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


@pytest.fixture
def idx_folder(tmp_path: Path) -> Path:
    return write_mnist_like(tmp_path / "fashion")


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images")
