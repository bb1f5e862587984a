"""Batches: in memory or from files, worker processes, seeds, and the splits' limits."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset

from models.architectures import build_model
from models.data import default_loader_workers
from models.data.loaders import MAX_LOADER_WORKERS, epoch_order
from models.datasets import load_dataset
from models.train import TrainConfig, evaluate, train_model


def test_loader_workers_do_not_change_results_under_a_seed(image_folder: Path) -> None:
    """Augmentation draws from per-sample seeds, the order from the main process."""
    torch.set_num_threads(1)
    states, accuracies, batches = [], [], []
    for workers in (0, 2):
        splits = load_dataset("imagefolder", image_size=16, root=image_folder, seed=0,
                              loader_workers=workers)
        assert splits.loading.worker_count() == workers
        batches.append(next(iter(splits.loader("train", 6, shuffle=True, seed=4,
                                               augment=True))))
        torch.manual_seed(0)
        model = build_model("cifar_resnet20", num_classes=3)
        train_model(model, splits, TrainConfig(epochs=2, batch_size=4, seed=1),
                    eval_split=None)
        states.append(model.state_dict())
        accuracies.append(evaluate(model, splits, "test"))
    for first, second in zip(batches[0], batches[1], strict=True):
        assert torch.equal(first, second)
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key
    assert accuracies[0] == accuracies[1]


def test_augmented_file_batches_change_with_the_epoch_seed(image_folder: Path) -> None:
    splits = load_dataset("imagefolder", image_size=16, root=image_folder, loader_workers=0)
    batches = splits.loader("train", 8, shuffle=True, seed=1, augment=True)
    first, first_labels = next(iter(batches))
    again, again_labels = next(iter(batches))
    assert torch.equal(first, again) and torch.equal(first_labels, again_labels)
    batches.reseed(2)
    assert not torch.equal(next(iter(batches))[0], first)
    plain = next(iter(splits.loader("train", 8)))[0]
    assert not torch.equal(plain, first)


def test_in_memory_batches_follow_the_seeded_order_of_any_subset() -> None:
    splits = load_dataset("digits", image_size=8, seed=0)
    subset = dataclasses.replace(splits, train=Subset(splits.train, range(10, 60)))
    order = epoch_order(50, seed=7)
    inputs, labels = next(iter(subset.loader("train", 50, shuffle=True, seed=7)))
    assert torch.equal(labels, splits.train.labels[10:60][order])
    torch.testing.assert_close(inputs[3], splits.train[10 + int(order[3])][0])
    augmented = next(iter(subset.loader("train", 50, shuffle=True, seed=7, augment=True)))[0]
    assert torch.equal(augmented, inputs)  # digits' preset: no augmentation


def test_in_memory_augmentation_is_seeded(idx_folder: Path) -> None:
    splits = load_dataset("fashion_mnist", root=idx_folder, seed=0)
    one = next(iter(splits.loader("train", 16, shuffle=True, seed=3, augment=True)))[0]
    two = next(iter(splits.loader("train", 16, shuffle=True, seed=3, augment=True)))[0]
    other = next(iter(splits.loader("train", 16, shuffle=True, seed=4, augment=True)))[0]
    plain = next(iter(splits.loader("train", 16, shuffle=True, seed=3)))[0]
    assert torch.equal(one, two) and not torch.equal(one, other)
    assert not torch.equal(one, plain) and one.shape == plain.shape


def test_limit_cuts_a_split_to_the_same_first_items(image_folder: Path) -> None:
    digits = load_dataset("digits", image_size=8)
    limited = digits.limit("val", 20)
    assert len(limited.val) == 20 and limited.train is digits.train
    assert torch.equal(limited.val.images, digits.val.images[:20])
    assert digits.limit("val", None) is digits and digits.limit("val", 10_000) is digits
    files = load_dataset("imagefolder", image_size=12, root=image_folder)
    assert len(files.limit("test", 5).test) == 5


def test_default_loader_workers_leave_cores_for_training() -> None:
    cores = len(os.sched_getaffinity(0))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert default_loader_workers("cpu") == min(MAX_LOADER_WORKERS, cores - 1)
        torch.set_num_threads(cores)
        assert default_loader_workers("cpu") == 0  # the compute threads take every core
    finally:
        torch.set_num_threads(threads)
    if torch.cuda.is_available():
        assert default_loader_workers("cuda") >= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_image_files_reach_the_gpu_normalised(image_folder: Path) -> None:
    splits = load_dataset("imagefolder", image_size=16, root=image_folder,
                          loader_workers=1).to_device("cuda")
    inputs, labels = next(iter(splits.loader("train", 4, shuffle=True, augment=True)))
    assert inputs.is_cuda and labels.is_cuda and inputs.dtype == torch.float32
