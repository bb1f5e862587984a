"""Batches for training and evaluation, from images in memory or from image files.

* ``TensorImages``: a whole split as one tensor. Batches are cut with one
  ``index_select`` and augmented where the tensor lives (on the GPU when the
  split was moved there): no worker processes, no copy back to the host.
* ``FileImages``: image files (an ImageFolder). Loader worker processes decode,
  resize, crop and augment with PIL and hand over uint8 tensors; on CUDA they
  travel through pinned memory with non-blocking copies and are normalised on the
  device. Workers persist across the epochs of a run and prefetch batches.

Results do not depend on the number of loader workers: the order of a shuffled
epoch is drawn in the main process from the run's seed, and each sample's
augmentation from a seed of its own (epoch seed and position), whichever process
computes it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from models.data.presets import Preprocessing

__all__ = ["Batches", "FileImages", "LoaderSettings", "TensorImages", "default_loader_workers",
           "make_batches", "unwrap_subsets"]

#: Batches each loader worker keeps ready (DataLoader's ``prefetch_factor``).
PREFETCH_BATCHES = 4
#: At most this many loader workers per device, however many cores there are.
MAX_LOADER_WORKERS = 16


def default_loader_workers(device: str | torch.device = "cpu") -> int:
    """Loader workers for one device: on CUDA, the cores this process may use shared
    between the visible GPUs, less one for the training process itself; on a CPU
    device, the cores torch's own threads leave free (none by default: a loader
    process beside busy compute threads makes them wait for each other, and
    decoding small images costs less than that)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    if torch.device(device).type == "cuda":
        per_device = cores // max(1, torch.cuda.device_count())
        return max(1, min(MAX_LOADER_WORKERS, per_device - 1))
    return max(0, min(MAX_LOADER_WORKERS, cores - torch.get_num_threads()))


@dataclass(frozen=True)
class LoaderSettings:
    """How batches of image files are loaded.

    Attributes:
        workers: loader worker processes; None: ``default_loader_workers(device)``.
        device: where batches are used: on CUDA they are pinned, copied without
            blocking and normalised there.
    """

    workers: int | None = None
    device: str = "cpu"

    def worker_count(self) -> int:
        return default_loader_workers(self.device) if self.workers is None else self.workers


class TensorImages(Dataset):
    """A split held in memory: images ``(N, C, H, W)`` (uint8 pixels, or floats in
    [0, 1]) and labels ``(N,)``, on one device.

    ``dataset[i]`` is one image ready for the network (evaluation preprocessing);
    ``make_batches`` cuts, augments and finishes whole batches instead.
    """

    def __init__(self, images: Tensor, labels: Tensor, preprocessing: Preprocessing) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.preprocessing.finish_batch(self.images[index:index + 1])[0], self.labels[index]

    def select(self, indices: Any) -> TensorImages:
        """A new split of the given rows (copied, contiguous)."""
        index = torch.as_tensor(indices, dtype=torch.long, device=self.images.device)
        return TensorImages(self.images.index_select(0, index),
                            self.labels.index_select(0, index), self.preprocessing)

    def to(self, device: str | torch.device) -> TensorImages:
        return TensorImages(self.images.to(device), self.labels.to(device), self.preprocessing)

    def nbytes(self) -> int:
        return sum(t.element_size() * t.nelement() for t in (self.images, self.labels))


class FileImages(Dataset):
    """Image files with labels, read with PIL (``torchvision.datasets.ImageFolder``).

    ``dataset[i]`` is one image ready for the network (evaluation preprocessing).
    The loader asks for ``dataset[(i, seed)]`` instead: uint8 pixels, augmented
    with ``seed`` (training) or only resized and cropped (``seed`` None).
    """

    def __init__(self, folder: Any, preprocessing: Preprocessing) -> None:
        self.folder = folder
        self.preprocessing = preprocessing
        self._train = preprocessing.file_transform(train=True)
        self._eval = preprocessing.file_transform(train=False)

    @property
    def classes(self) -> list[str]:
        return list(self.folder.classes)

    @property
    def samples(self) -> list[tuple[str, int]]:
        return list(self.folder.samples)

    def __len__(self) -> int:
        return len(self.folder)

    def pixels(self, index: int, seed: int | None) -> tuple[Tensor, int]:
        path, label = self.folder.samples[index]
        image = self.folder.loader(path)
        if seed is None:
            return self._eval(image), label
        return self._train(image, random.Random(seed)), label

    def __getitem__(self, key: Any) -> tuple[Tensor, Any]:
        if isinstance(key, tuple):
            return self.pixels(*key)
        pixels, label = self.pixels(key, None)
        return self.preprocessing.finish_batch(pixels[None])[0], torch.tensor(label)


def unwrap_subsets(dataset: Dataset) -> tuple[Dataset, list[int] | None]:
    """The dataset under (nested) ``Subset`` wrappers, and which of its rows they keep."""
    indices: list[int] | None = None
    while isinstance(dataset, Subset):
        chosen = [int(i) for i in dataset.indices]
        indices = chosen if indices is None else [chosen[i] for i in indices]
        dataset = dataset.dataset
    return dataset, indices


def epoch_order(count: int, seed: int) -> Tensor:
    """A shuffled epoch: the order a ``DataLoader(shuffle=True)`` seeded with
    ``torch.Generator().manual_seed(seed)`` gives (it draws its workers' base seed from
    the generator before the permutation), so runs keep the orders they had before
    batches were cut here."""
    generator = torch.Generator().manual_seed(seed)
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    return torch.randperm(count, generator=generator)


def _sample_seed(epoch_seed: int, position: int) -> int:
    return (epoch_seed * 1_000_003 + position) % (2**63)


class _Order(Sampler):
    """Rows of one epoch: in order, or shuffled by the seed (``epoch_order``); with
    ``seeded``, each row comes with its sample seed."""

    def __init__(self, rows: list[int], shuffle: bool, seed: int, seeded: bool) -> None:
        self.rows, self.shuffle, self.seed, self.seeded = rows, shuffle, seed, seeded

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Any]:
        order = (epoch_order(len(self.rows), self.seed).tolist() if self.shuffle
                 else range(len(self.rows)))
        for position, index in enumerate(order):
            row = self.rows[index]
            yield (row, _sample_seed(self.seed, position)) if self.seeded else row


class Batches:
    """Reusable batches over one split: ``for inputs, labels in batches``.

    ``reseed(seed)`` starts a new epoch order (and new augmentation) without
    restarting loader workers.
    """

    def __init__(self, batch_size: int, shuffle: bool, seed: int) -> None:
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed

    def reseed(self, seed: int) -> None:
        self.seed = seed

    def __len__(self) -> int:
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        raise NotImplementedError


class _TensorBatches(Batches):
    def __init__(self, dataset: TensorImages, rows: list[int] | None, batch_size: int,
                 shuffle: bool, seed: int, augment: bool) -> None:
        super().__init__(batch_size, shuffle, seed)
        self.dataset, self.augment = dataset, augment
        device = dataset.images.device
        self.rows = (torch.as_tensor(rows, dtype=torch.long, device=device)
                     if rows is not None else None)

    def _count(self) -> int:
        return len(self.dataset) if self.rows is None else len(self.rows)

    def __len__(self) -> int:
        return -(-self._count() // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        data = self.dataset
        device = data.images.device
        count = self._count()
        order = (epoch_order(count, self.seed) if self.shuffle
                 else torch.arange(count)).to(device)
        if self.rows is not None:
            order = self.rows[order]
        generator = None
        if self.augment:
            generator = torch.Generator(device=device).manual_seed(_sample_seed(self.seed, -1))
        preprocessing = data.preprocessing
        for start in range(0, count, self.batch_size):
            index = order[start:start + self.batch_size]
            images = data.images.index_select(0, index)
            if generator is not None:
                if images.dtype == torch.uint8:
                    images = images.float().div_(255)
                images = preprocessing.augment_batch(images, generator)
            yield preprocessing.finish_batch(images), data.labels.index_select(0, index)


class _LoaderBatches(Batches):
    """A ``DataLoader`` over any map-style dataset; image files travel as uint8 and are
    finished on the device."""

    def __init__(self, dataset: Dataset, rows: list[int] | None, batch_size: int,
                 shuffle: bool, seed: int, augment: bool, settings: LoaderSettings,
                 persistent: bool) -> None:
        super().__init__(batch_size, shuffle, seed)
        self.files = isinstance(dataset, FileImages)
        rows = list(range(len(dataset))) if rows is None else rows  # type: ignore[arg-type]
        self.order = _Order(rows, shuffle, seed, seeded=self.files and augment)
        self.device = torch.device(settings.device)
        workers = settings.worker_count()
        if not self.files:
            # Objects that are not ours cannot say whether they parallelise safely.
            workers = 0
        key_batches: Any = self.order
        if self.files and not self.order.seeded:
            key_batches = _Keys(self.order)
        self.loader = DataLoader(
            dataset, batch_size=batch_size, sampler=key_batches, num_workers=workers,
            pin_memory=self.device.type == "cuda", persistent_workers=persistent and workers > 0,
            prefetch_factor=PREFETCH_BATCHES if workers > 0 else None)

    def reseed(self, seed: int) -> None:
        super().reseed(seed)
        self.order.seed = seed

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for images, labels in self.loader:
            if not self.files:
                yield images, labels
                continue
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            yield self.dataset_preprocessing.finish_batch(images), labels

    @property
    def dataset_preprocessing(self) -> Preprocessing:
        dataset = self.loader.dataset
        assert isinstance(dataset, FileImages)
        return dataset.preprocessing


class _Keys(Sampler):
    """Evaluation keys of image files: ``(row, None)``, i.e. pixels without augmentation."""

    def __init__(self, order: _Order) -> None:
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[tuple[int, None]]:
        for row in self.order:
            yield row, None


def make_batches(dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                 augment: bool = False, settings: LoaderSettings | None = None,
                 persistent: bool = False) -> Batches:
    """Batches of network-ready inputs and their labels over one split.

    Args:
        dataset: a ``TensorImages``, ``FileImages``, any other map-style dataset of
            (input, label) items, or ``Subset`` s of them.
        batch_size: images per batch (the last batch may be smaller).
        shuffle: a new order each epoch, drawn from ``seed``.
        seed: the epoch's seed (``Batches.reseed`` changes it).
        augment: apply the training augmentation of the data's preprocessing.
        settings: loader workers and target device for image files.
        persistent: keep the loader workers between epochs (a training run).
    """
    base, rows = unwrap_subsets(dataset)
    if isinstance(base, TensorImages):
        return _TensorBatches(base, rows, batch_size, shuffle, seed, augment)
    return _LoaderBatches(base, rows, batch_size, shuffle, seed, augment,
                          settings or LoaderSettings(), persistent)
