"""Datasets: the built-in digits, MNIST and Fashion-MNIST (IDX files), CIFAR-10/100 from
a local folder, ImageFolder. Nothing is downloaded.

Every dataset comes back as four splits (train / val / test / calibration) so
that importance scores are computed on data the search never scores on. Where a
dataset has an official test split (MNIST, Fashion-MNIST, CIFAR, an ImageFolder's
``val/``), it stays whole as ``test`` and val and calibration are carved from the
training images. Digits, MNIST, Fashion-MNIST and CIFAR are held in memory as
uint8 tensors (``models.data.TensorImages``); ImageFolder images are read from
their files by loader workers (``models.data.FileImages``). Preprocessing comes
from the dataset's preset with the spec's overrides (``models.data.presets``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional
from torch.utils.data import Dataset, Subset

from core.catalog import DATASETS
from core.errors import DatasetError, InvalidSpecError
from models.data.idx import read_idx_split
from models.data.loaders import (
    Batches,
    FileImages,
    LoaderSettings,
    TensorImages,
    make_batches,
    unwrap_subsets,
)
from models.data.presets import Preprocessing, resolve_preprocessing

SPLITS = ("train", "val", "test", "calibration")


@dataclass
class DataSplits:
    """The four splits of one dataset, plus what a model needs to know about it.

    Attributes:
        train: fine-tuning and baseline training data.
        val: what trials are scored on (accuracy in the search objective).
        test: held out; the final model is reported on it.
        calibration: importance scorers (attention gates, PLS) see only this.
        num_classes: number of labels.
        input_shape: (channels, height, width) of one network input.
        preprocessing: how an image becomes an input (None for data built elsewhere).
        loading: loader workers and the device batches go to.
        labels: the class name of each output index (None: not known).
    """

    train: Dataset
    val: Dataset
    test: Dataset
    calibration: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    preprocessing: Preprocessing | None = None
    loading: LoaderSettings = field(default_factory=LoaderSettings)
    labels: tuple[str, ...] | None = None

    def export_metadata(self) -> dict[str, Any] | None:
        """What every export of a network trained on these splits carries: how to feed it
        an image (``Preprocessing.to_metadata``) and, under ``labels``, the class name of
        each of its outputs. None without a preprocessing."""
        if self.preprocessing is None:
            return None
        metadata = self.preprocessing.to_metadata()
        if self.labels is not None:
            metadata["labels"] = list(self.labels)
        return metadata

    def loader(self, split: str, batch_size: int = 64, shuffle: bool = False,
               seed: int = 0, augment: bool = False, persistent: bool = False) -> Batches:
        """Batches of one split, ready for the network.

        Args:
            split: ``train``, ``val``, ``test`` or ``calibration``.
            batch_size: images per batch.
            shuffle: seeded order (``Batches.reseed`` for the next epoch).
            seed: the order's (and the augmentation's) seed.
            augment: the preprocessing's training augmentation.
            persistent: loader workers live as long as the returned object.
        """
        return make_batches(getattr(self, split), batch_size, shuffle=shuffle, seed=seed,
                            augment=augment, settings=self.loading, persistent=persistent)

    def example_input(self, batch_size: int = 1) -> Tensor:
        return torch.zeros(batch_size, *self.input_shape)

    def limit(self, split: str, count: int | None) -> DataSplits:
        """The same splits with ``split`` cut to its first ``count`` items (the same
        items every time); ``self`` when it is no longer than that."""
        data = getattr(self, split)
        if count is None or len(data) <= count:  # type: ignore[arg-type]
            return self
        cut: Dataset = (data.select(range(count)) if isinstance(data, TensorImages)
                        else Subset(data, range(count)))
        limited = replace(self)
        setattr(limited, split, cut)
        return limited

    def to_device(self, device: str | torch.device, max_share: float = 0.25) -> DataSplits:
        """The splits for training on ``device``.

        On CUDA, in-memory splits move to the device when together they take less
        than ``max_share`` of its free memory (batches are then cut and augmented
        there), and image files are loaded into pinned memory. A CPU device gets
        ``self`` back.
        """
        device = torch.device(device)
        if device.type != "cuda":
            return self
        moved = replace(self, loading=replace(self.loading, device=str(device)))
        unwrapped = [unwrap_subsets(getattr(self, split)) for split in SPLITS]
        bases = {id(base): base for base, _ in unwrapped}
        if not all(isinstance(base, TensorImages) for base in bases.values()):
            return moved
        size = sum(base.nbytes() for base in bases.values())  # type: ignore[attr-defined]
        free, _total = torch.cuda.mem_get_info(device)
        if size > max_share * free:
            return moved
        on_device = {key: base.to(device) for key, base in bases.items()}  # type: ignore
        for split, (base, rows) in zip(SPLITS, unwrapped, strict=True):
            data = on_device[id(base)]
            setattr(moved, split, data if rows is None else Subset(data, rows))
        return moved


def _held_out(count: int, seed: int) -> tuple[list[int], list[int], list[int]]:
    """train / val (10%) / calibration (5%) rows of a training set, deterministic by seed."""
    order = np.random.default_rng(seed).permutation(count)
    cut_val = count // 10
    cut_calibration = cut_val + count // 20
    return (order[cut_calibration:].tolist(), order[:cut_val].tolist(),
            order[cut_val:cut_calibration].tolist())


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


def _splits(train: Dataset, val: Dataset, test: Dataset, calibration: Dataset,
            num_classes: int, preprocessing: Preprocessing,
            loader_workers: int | None, labels: Sequence[str] | None = None) -> DataSplits:
    size = preprocessing.image_size
    return DataSplits(train, val, test, calibration, num_classes,
                      (preprocessing.channels, size, size), preprocessing,
                      LoaderSettings(workers=loader_workers),
                      tuple(labels) if labels is not None else None)


def _digits(preprocessing: Preprocessing, seed: int, loader_workers: int | None) -> DataSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    size = preprocessing.image_size
    if size != 8:
        images = functional.interpolate(images, size=(size, size), mode="bilinear",
                                        align_corners=False)
    labels = torch.tensor(bunch.target, dtype=torch.long)
    everything = TensorImages(images.contiguous(), labels, preprocessing)
    train, val, test, calibration = (
        everything.select(rows) for rows in _split_indices(len(labels), seed, (0.12, 0.12, 0.08)))
    return _splits(train, val, test, calibration, 10, preprocessing, loader_workers,
                   DATASETS["digits"].labels)


def _resized(images: np.ndarray, size: int) -> Tensor:
    """uint8 images ``(N, H, W)`` or ``(N, H, W, 3)`` -> uint8 ``(N, C, size, size)``,
    resized with PIL as ``models.data.preprocess_image`` resizes one image."""
    if images.shape[1] != size or images.shape[2] != size:
        from PIL import Image

        images = np.stack([np.asarray(Image.fromarray(image).resize((size, size),
                                                                    Image.Resampling.BILINEAR))
                           for image in images])
    tensor = torch.from_numpy(np.require(images, requirements=["C", "W"]))
    tensor = tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)
    return tensor.contiguous()


def _in_memory(train_images: np.ndarray, train_labels: Any, test_images: np.ndarray,
               test_labels: Any, num_classes: int, preprocessing: Preprocessing, seed: int,
               loader_workers: int | None, labels: Sequence[str] | None) -> DataSplits:
    size = preprocessing.image_size
    full = TensorImages(_resized(train_images, size),
                        torch.from_numpy(np.asarray(train_labels, dtype=np.int64)), preprocessing)
    test = TensorImages(_resized(test_images, size),
                        torch.from_numpy(np.asarray(test_labels, dtype=np.int64)), preprocessing)
    train, val, calibration = (full.select(rows) for rows in _held_out(len(full), seed))
    return _splits(train, val, test, calibration, num_classes, preprocessing, loader_workers,
                   labels)


def _check_root(root: str | Path | None, name: str, expected: str) -> Path:
    if root is None:
        raise InvalidSpecError(f"dataset {name!r} needs a root folder ({expected})")
    path = Path(root)
    if not path.is_dir():
        raise DatasetError(f"dataset root {str(path)!r} for {name!r} is not a readable folder; "
                           f"expected {expected}")
    return path


def _idx(name: str, root: str | Path | None, preprocessing: Preprocessing, seed: int,
         loader_workers: int | None) -> DataSplits:
    expected = ("the four IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (gzipped or not)")
    path = _check_root(root, name, expected)
    train_images, train_labels = read_idx_split(path, "train")
    test_images, test_labels = read_idx_split(path, "test")
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    if classes > 10:
        raise DatasetError(f"{name} under {str(path)!r} has labels up to {classes - 1}; "
                           "MNIST-style data has 10 classes")
    return _in_memory(train_images, train_labels, test_images, test_labels, 10,
                      preprocessing, seed, loader_workers, DATASETS[name].labels)


def _cifar(name: str, root: str | Path | None, preprocessing: Preprocessing, seed: int,
           loader_workers: int | None) -> DataSplits:
    from torchvision import datasets

    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    path = _check_root(root, name, f"a folder containing {folder}/ (torchvision layout)")
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        train = cls(str(path), train=True, download=False)
        test = cls(str(path), train=False, download=False)
    except (RuntimeError, OSError) as error:
        raise DatasetError(f"cannot read {name} under {str(path)!r}: expected {folder}/ with the "
                           f"python batches; nothing is downloaded ({error})") from error
    return _in_memory(train.data, train.targets, test.data, test.targets,
                      10 if name == "cifar10" else 100, preprocessing, seed, loader_workers,
                      train.classes)


def _imagefolder(root: str | Path | None, preprocessing: Preprocessing, seed: int,
                 loader_workers: int | None) -> DataSplits:
    from torchvision import datasets

    expected = "train/ and val/ folders, each with one sub-folder of images per class"
    path = _check_root(root, "imagefolder", expected)
    try:
        train_folder = datasets.ImageFolder(str(path / "train"))
        test_folder = datasets.ImageFolder(str(path / "val"))
    except (FileNotFoundError, OSError) as error:
        raise DatasetError(f"cannot read an image folder under {str(path)!r}: expected "
                           f"{expected} ({error})") from error
    if test_folder.classes != train_folder.classes:
        raise DatasetError(f"{str(path / 'val')!r} has classes {test_folder.classes[:8]} but "
                           f"train/ has {train_folder.classes[:8]}; both need the same "
                           "class sub-folders")
    full = FileImages(train_folder, preprocessing)
    train, val, calibration = (Subset(full, rows) for rows in _held_out(len(full), seed))
    return _splits(train, val, FileImages(test_folder, preprocessing), calibration,
                   len(train_folder.classes), preprocessing, loader_workers,
                   train_folder.classes)


def load_dataset(name: str, image_size: int | None = None, root: str | Path | None = None,
                 seed: int = 0, preprocessing: Any = None,
                 loader_workers: int | None = None) -> DataSplits:
    """Load a dataset's train / val / test / calibration splits.

    Args:
        name: ``digits``, ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100`` or
            ``imagefolder``.
        image_size: side of the square images; the dataset's default when None.
        root: folder for the datasets that need one (already resolved and
            checked against the data root by the caller).
        seed: decides the splits; the same seed gives the same splits.
        preprocessing: overrides of the dataset's preset (a
            ``core.spec.PreprocessingSpec``); None keeps the preset.
        loader_workers: loader processes for image files; None: from the cores.

    Raises:
        InvalidSpecError: unknown name, a missing root or impossible preprocessing.
        DatasetError: a root that is missing or unreadable.
    """
    info = DATASETS.get(name)
    if info is None:
        raise InvalidSpecError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    size = image_size or info.default_image_size
    if size < 8 or size > 1024:
        raise InvalidSpecError(f"image_size must be between 8 and 1024, got {size}")
    resolved = resolve_preprocessing(name, size, preprocessing)
    if name == "digits":
        return _digits(resolved, seed, loader_workers)
    if name in ("mnist", "fashion_mnist"):
        return _idx(name, root, resolved, seed, loader_workers)
    if name in ("cifar10", "cifar100"):
        return _cifar(name, root, resolved, seed, loader_workers)
    return _imagefolder(root, resolved, seed, loader_workers)
