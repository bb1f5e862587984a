"""MNIST and Fashion-MNIST: the IDX reader and the splits built from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.catalog import NORMALIZATIONS
from core.errors import DatasetError
from core.spec import PreprocessingSpec
from models.data import read_idx, read_idx_split
from models.datasets import load_dataset
from tests.models_tests.conftest import mnist_like, write_idx, write_mnist_like

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.parametrize("gzipped", [True, False])
def test_idx_files_read_back_gzipped_or_not(tmp_path: Path, gzipped: bool) -> None:
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    image_path = write_idx(tmp_path / "train-images-idx3-ubyte", images, gzipped)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels, gzipped)
    assert image_path.name.endswith(".gz") == gzipped
    np.testing.assert_array_equal(read_idx(image_path), images)
    read_images, read_labels = read_idx_split(tmp_path, "train")
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_labels, labels)


def test_malformed_idx_files_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte"):
        read_idx_split(tmp_path, "test")
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(DatasetError, match="magic"):
        read_idx(bad)
    floats = tmp_path / "floats"
    floats.write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01" + b"\x00" * 4)
    with pytest.raises(DatasetError, match="0x0d"):
        read_idx(floats)
    short = write_idx(tmp_path / "short", np.zeros((4, 2, 2), np.uint8), gzipped=False)
    short.write_bytes(short.read_bytes()[:-3])
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(short)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 2, 2), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(DatasetError, match="disagree"):
        read_idx_split(tmp_path, "train")


def test_fashion_mnist_keeps_the_test_split_whole_and_carves_val_from_train(
        idx_folder: Path) -> None:
    splits = load_dataset("fashion_mnist", root=idx_folder, seed=0)
    assert splits.labels is not None and splits.labels[0] == "T-shirt/top"
    assert splits.labels[9] == "Ankle boot" and len(splits.labels) == splits.num_classes
    assert splits.input_shape == (3, 28, 28) and splits.num_classes == 10
    assert (len(splits.train), len(splits.val), len(splits.calibration)) == (204, 24, 12)
    test_images, test_labels = mnist_like(60, seed=1)
    # The official test split, whole and in its order.
    assert torch.equal(splits.test.images[:, 0], torch.from_numpy(test_images))
    assert torch.equal(splits.test.labels, torch.from_numpy(test_labels).long())
    # val, calibration and train are disjoint parts of the 240 training images.
    rows = [tuple(image.flatten().tolist()) for name in ("train", "val", "calibration")
            for image in getattr(splits, name).images]
    assert len(set(rows)) == 240
    image, label = splits.test[0]
    mean, std = NORMALIZATIONS["fashion_mnist"]
    expected = (torch.from_numpy(test_images[0]).float() / 255 - mean[0]) / std[0]
    assert image.shape == (3, 28, 28) and int(label) == int(test_labels[0])
    for channel in range(3):  # gray repeated to the three channels the networks take
        torch.testing.assert_close(image[channel], expected)


def test_one_channel_kept_and_other_sizes(idx_folder: Path) -> None:
    gray = load_dataset("mnist", root=idx_folder, preprocessing=PreprocessingSpec(channels=1))
    assert gray.input_shape == (1, 28, 28) and gray.test[0][0].shape == (1, 28, 28)
    bigger = load_dataset("mnist", image_size=32, root=idx_folder)
    assert bigger.input_shape == (3, 32, 32)
    assert next(iter(bigger.loader("train", 8, augment=True)))[0].shape == (8, 3, 32, 32)


def test_plain_idx_files_load_like_gzipped_ones(tmp_path: Path) -> None:
    plain = load_dataset("mnist", root=write_mnist_like(tmp_path / "plain", gzipped=False))
    packed = load_dataset("mnist", root=write_mnist_like(tmp_path / "packed"))
    assert torch.equal(plain.train.images, packed.train.images)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(),
                    reason="apt-get install dataset-fashion-mnist")
def test_the_installed_fashion_mnist_has_its_published_sizes() -> None:
    splits = load_dataset("fashion_mnist", root=DEBIAN_FASHION_MNIST)
    sizes = [len(getattr(splits, name)) for name in ("train", "val", "calibration", "test")]
    assert sizes == [51_000, 6_000, 3_000, 10_000]
    assert splits.test.images.dtype == torch.uint8  # 47 MB in memory, not 560
