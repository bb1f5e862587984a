"""Datasets: the built-in digits, CIFAR-10/100 from a local folder, ImageFolder.

Every dataset comes back as four splits (train / val / test / calibration) so
that importance scores are computed on data the search never scores on.
Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from core.catalog import DATASETS
from core.errors import DatasetError, InvalidSpecError

# CIFAR channel statistics (used for every torchvision-read dataset).
_MEAN = (0.4914, 0.4822, 0.4465)
_STD = (0.2470, 0.2435, 0.2616)


@dataclass
class DataSplits:
    """The four splits of one dataset, plus what a model needs to know about it.

    Attributes:
        train: fine-tuning and baseline training data.
        val: what trials are scored on (accuracy in the search objective).
        test: held out; the final model is reported on it.
        calibration: importance scorers (attention gates, PLS) see only this.
        num_classes: number of labels.
        input_shape: (channels, height, width) of one image.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    calibration: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]

    def loader(self, split: str, batch_size: int = 64, shuffle: bool = False,
               seed: int = 0) -> DataLoader:
        """A DataLoader over one split; shuffling is seeded for reproducibility."""
        dataset = getattr(self, split)
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)

    def example_input(self, batch_size: int = 1) -> Tensor:
        return torch.zeros(batch_size, *self.input_shape)

    def to_device(self, device: str | torch.device, max_share: float = 0.25) -> DataSplits:
        """Copies of in-memory splits on a CUDA device, when they fit.

        Trials then never copy batches from the host. Only tensor datasets
        (``digits``) move, and only when they take less than ``max_share`` of
        the device's free memory; anything else (and every CPU device) returns
        ``self`` unchanged.
        """
        device = torch.device(device)
        splits = (self.train, self.val, self.test, self.calibration)
        if device.type != "cuda" or not all(isinstance(s, TensorDataset) for s in splits):
            return self
        size = sum(t.element_size() * t.nelement()
                   for s in splits for t in cast(TensorDataset, s).tensors)
        free, _total = torch.cuda.mem_get_info(device)
        if size > max_share * free:
            return self
        train, val, test, calibration = (
            TensorDataset(*(t.to(device) for t in cast(TensorDataset, s).tensors))
            for s in splits)
        return DataSplits(train, val, test, calibration, num_classes=self.num_classes,
                          input_shape=self.input_shape)


def _split_indices(count: int, seed: int,
                   fractions: tuple[float, float, float]) -> list[np.ndarray]:
    """Deterministic disjoint index sets for val, test, calibration; the rest is train."""
    order = np.random.default_rng(seed).permutation(count)
    sizes = [int(round(count * f)) for f in fractions]
    val = order[: sizes[0]]
    test = order[sizes[0]: sizes[0] + sizes[1]]
    calibration = order[sizes[0] + sizes[1]: sum(sizes)]
    train = order[sum(sizes):]
    return [train, val, test, calibration]


def _digits(image_size: int, seed: int) -> DataSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != 8:
        images = functional.interpolate(images, size=(image_size, image_size), mode="bilinear",
                                        align_corners=False)
    images = ((images - 0.5) / 0.5).repeat(1, 3, 1, 1).contiguous()
    labels = torch.tensor(bunch.target, dtype=torch.long)
    train, val, test, calibration = (
        TensorDataset(images[idx], labels[idx])
        for idx in _split_indices(len(labels), seed, (0.12, 0.12, 0.08))
    )
    return DataSplits(train, val, test, calibration, 10, (3, image_size, image_size))


def _transform(image_size: int):  # type: ignore[no-untyped-def]
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize((image_size, image_size)),
        transforms.ToTensor(),
        transforms.Normalize(_MEAN, _STD),
    ])


def _check_root(root: str | Path | None, name: str, expected: str) -> Path:
    if root is None:
        raise InvalidSpecError(f"dataset {name!r} needs a root folder ({expected})")
    path = Path(root)
    if not path.is_dir():
        raise DatasetError(f"dataset root {str(path)!r} for {name!r} is not a readable folder; "
                           f"expected {expected}")
    return path


def _held_out_splits(train_full: Dataset, test: Dataset, seed: int, num_classes: int,
                     image_size: int) -> DataSplits:
    """val and calibration are carved from the training set; the test set stays whole."""
    order = np.random.default_rng(seed).permutation(len(train_full))  # type: ignore[arg-type]
    cut_val = len(order) // 10
    cut_cal = cut_val + len(order) // 20
    return DataSplits(
        train=Subset(train_full, order[cut_cal:].tolist()),
        val=Subset(train_full, order[:cut_val].tolist()),
        test=test,
        calibration=Subset(train_full, order[cut_val:cut_cal].tolist()),
        num_classes=num_classes,
        input_shape=(3, image_size, image_size),
    )


def _cifar(name: str, root: str | Path | None, image_size: int, seed: int) -> DataSplits:
    from torchvision import datasets

    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    path = _check_root(root, name, f"a folder containing {folder}/ (torchvision layout)")
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        train_full = cls(str(path), train=True, download=False, transform=_transform(image_size))
        test = cls(str(path), train=False, download=False, transform=_transform(image_size))
    except (RuntimeError, OSError) as error:
        raise DatasetError(f"cannot read {name} under {str(path)!r}: expected {folder}/ with the "
                           f"python batches; nothing is downloaded ({error})") from error
    return _held_out_splits(train_full, test, seed, 10 if name == "cifar10" else 100, image_size)


def _imagefolder(root: str | Path | None, image_size: int, seed: int) -> DataSplits:
    from torchvision import datasets

    expected = "train/ and val/ folders, each with one sub-folder of images per class"
    path = _check_root(root, "imagefolder", expected)
    try:
        train_full = datasets.ImageFolder(str(path / "train"), transform=_transform(image_size))
        test = datasets.ImageFolder(str(path / "val"), transform=_transform(image_size))
    except (FileNotFoundError, OSError) as error:
        raise DatasetError(f"cannot read an image folder under {str(path)!r}: expected "
                           f"{expected} ({error})") from error
    return _held_out_splits(train_full, test, seed, len(train_full.classes), image_size)


def load_dataset(name: str, image_size: int | None = None, root: str | Path | None = None,
                 seed: int = 0) -> DataSplits:
    """Load a dataset's train / val / test / calibration splits.

    Args:
        name: ``digits``, ``cifar10``, ``cifar100`` or ``imagefolder``.
        image_size: side of the square images; the dataset's default when None.
        root: folder for the datasets that need one (already resolved and
            checked against the data root by the caller).
        seed: decides the splits; the same seed gives the same splits.

    Raises:
        InvalidSpecError: unknown name or a missing root.
        DatasetError: a root that is missing or unreadable.
    """
    info = DATASETS.get(name)
    if info is None:
        raise InvalidSpecError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    size = image_size or info.default_image_size
    if size < 8 or size > 1024:
        raise InvalidSpecError(f"image_size must be between 8 and 1024, got {size}")
    if name == "digits":
        return _digits(size, seed)
    if name in ("cifar10", "cifar100"):
        return _cifar(name, root, size, seed)
    return _imagefolder(root, size, seed)
