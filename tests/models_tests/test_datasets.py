from __future__ import annotations

import pytest
import torch

from core.errors import DatasetError, InvalidSpecError
from models import load_dataset


def test_digits_splits_are_disjoint_deterministic_and_sized() -> None:
    first = load_dataset("digits", image_size=16, seed=3)
    again = load_dataset("digits", image_size=16, seed=3)
    other = load_dataset("digits", image_size=16, seed=4)
    assert first.input_shape == (3, 16, 16) and first.num_classes == 10
    assert first.labels == tuple("0123456789")
    sizes = [len(getattr(first, s)) for s in ("train", "val", "test", "calibration")]
    assert sum(sizes) == 1797 and min(sizes) > 100
    assert torch.equal(first.val.images, again.val.images)
    assert not torch.equal(first.val.images, other.val.images)
    image, label = first.train[0]
    assert image.shape == (3, 16, 16) and 0 <= int(label) < 10
    # No image appears in two splits.
    flat = {s: {tuple(x.flatten()[:40].tolist()) for x in getattr(first, s).images}
            for s in ("train", "val")}
    assert len(flat["train"] & flat["val"]) < 5  # digits has a few exact duplicates


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagefolder", "mnist",
                                  "fashion_mnist"])
def test_missing_root_names_the_path_and_what_was_expected(name: str, tmp_path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="nowhere") as error:
        load_dataset(name, root=missing)
    assert "expected" in str(error.value)


def test_unreadable_cifar_folder_is_a_dataset_error(tmp_path) -> None:
    with pytest.raises(DatasetError, match="cifar-10-batches-py"):
        load_dataset("cifar10", root=tmp_path)


def test_imagefolder_reads_class_folders(tmp_path) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for index in range(3):
                Image.new("RGB", (20, 20), (index * 40, 0, 0)).save(folder / f"{index}.png")
    splits = load_dataset("imagefolder", image_size=12, root=tmp_path)
    assert splits.num_classes == 2 and splits.train[0][0].shape == (3, 12, 12)
    # Output i is the i-th class folder, by name, as every export says.
    assert splits.labels == ("cat", "dog")
    assert splits.export_metadata()["labels"] == ["cat", "dog"]
    assert len(splits.test) == 6  # val/ is the test split, whole
    inputs, labels = next(iter(splits.loader("test", 4)))
    assert inputs.dtype == torch.float32 and inputs.shape == (4, 3, 12, 12)
    torch.testing.assert_close(inputs[0], splits.test[0][0])


def test_imagefolder_val_must_have_the_train_classes(tmp_path) -> None:
    from PIL import Image

    for split, classes in (("train", ("cat", "dog")), ("val", ("cat", "cow"))):
        for cls in classes:
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (9, 9)).save(tmp_path / split / cls / "0.png")
    with pytest.raises(DatasetError, match="same class"):
        load_dataset("imagefolder", root=tmp_path)


def test_unknown_dataset_and_missing_root() -> None:
    with pytest.raises(InvalidSpecError, match="unknown dataset"):
        load_dataset("emnist")
    with pytest.raises(InvalidSpecError, match="needs a root"):
        load_dataset("cifar10")


def test_splits_stay_put_on_cpu_and_move_to_cuda_when_they_fit() -> None:
    splits = load_dataset("digits", image_size=8, seed=0)
    assert splits.to_device("cpu") is splits
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU for the moving half")
    moved = splits.to_device("cuda")
    assert moved.train.images.is_cuda and moved.num_classes == splits.num_classes
    inputs, labels = next(iter(moved.loader("train", 8, shuffle=True, augment=True)))
    assert inputs.is_cuda and labels.is_cuda
    assert not splits.to_device("cuda", max_share=0.0).train.images.is_cuda
