"""Each dataset's preprocessing preset, a spec's overrides, and the transforms they make."""

from __future__ import annotations

import pytest
import torch

from core.catalog import NORMALIZATIONS
from core.errors import InvalidSpecError
from core.spec import PreprocessingSpec
from models.data import preprocess_image, resolve_preprocessing


@pytest.mark.parametrize(("dataset", "size", "normalization", "augmentation", "flip", "resize"), [
    ("digits", 16, "centered", "none", False, None),
    ("mnist", 28, "mnist", "pad_crop", False, None),   # a mirrored 2 is no 2
    ("fashion_mnist", 28, "fashion_mnist", "pad_crop", True, None),
    ("cifar10", 32, "cifar", "pad_crop", True, None),
    ("cifar100", 32, "cifar", "pad_crop", True, None),
    ("imagefolder", 224, "imagenet", "random_resized_crop", True, 256),
])
def test_every_dataset_has_its_preset(dataset: str, size: int, normalization: str,
                                      augmentation: str, flip: bool, resize: int | None) -> None:
    preset = resolve_preprocessing(dataset, size)
    assert (preset.normalization, preset.augmentation, preset.flip, preset.resize) == (
        normalization, augmentation, flip, resize)
    assert preset.channels == 3 and preset.padding == max(1, round(size / 8))
    mean, std = NORMALIZATIONS[normalization]
    assert preset.mean[0] == mean[0] and preset.std[0] == std[0]
    metadata = preset.to_metadata()
    assert metadata["input_size"] == [size, size] and len(metadata["mean"]) == 3
    assert metadata["crop"] == size


def test_spec_overrides_replace_the_preset_field_by_field() -> None:
    spec = PreprocessingSpec(mean=[0.5], std=[0.25], augmentation="none", flip=False,
                             channels=1)
    gray = resolve_preprocessing("fashion_mnist", 28, spec)
    assert (gray.normalization, gray.mean, gray.std) == ("custom", (0.5,), (0.25,))
    assert (gray.augmentation, gray.flip, gray.channels) == ("none", False, 1)
    assert gray.to_metadata()["channels"] == 1 and gray.to_metadata()["color"] == "grayscale"
    photos = resolve_preprocessing("imagefolder", 64, PreprocessingSpec(
        normalization="cifar", resize=80, augmentation="pad_crop", padding=6))
    assert (photos.mean, photos.resize, photos.padding) == (NORMALIZATIONS["cifar"][0], 80, 6)
    # RGB statistics on gray data average to one value (the gray channel is repeated).
    assert resolve_preprocessing("mnist", 28, PreprocessingSpec(
        normalization="imagenet")).mean == pytest.approx((sum((0.485, 0.456, 0.406)) / 3,))
    with pytest.raises(InvalidSpecError, match="grayscale"):
        resolve_preprocessing("cifar10", 32, PreprocessingSpec(channels=1))


def _batch(count: int = 32, size: int = 8) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(1)) + 0.1


def test_pad_crop_cuts_every_image_out_of_itself_padded_with_black() -> None:
    preset = resolve_preprocessing("cifar10", 8, PreprocessingSpec(flip=False, padding=2))
    images = _batch()
    out = preset.augment_batch(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    offsets = set()
    for original, cut in zip(padded, out, strict=True):
        found = [(top, left) for top in range(5) for left in range(5)
                 if torch.equal(original[:, top:top + 8, left:left + 8], cut)]
        assert found, "not a window of the padded image"
        offsets.add(found[0])
    assert len(offsets) > 5  # offsets are drawn per image
    again = preset.augment_batch(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # the generator decides everything


def test_flip_mirrors_about_half_the_images() -> None:
    preset = resolve_preprocessing("fashion_mnist", 8, PreprocessingSpec(augmentation="none"))
    images = _batch(64)
    out = preset.augment_batch(images, torch.Generator().manual_seed(3))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, images, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, images, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 16 < sum(flipped) < 48


def test_random_resized_crop_on_tensors_keeps_size_and_range() -> None:
    preset = resolve_preprocessing("cifar10", 16, PreprocessingSpec(
        augmentation="random_resized_crop", flip=False))
    images = _batch(16, 16)
    out = preset.augment_batch(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and not torch.equal(out, images)
    assert out.min() >= 0 and out.max() <= images.max() + 1e-6


def test_finish_scales_normalises_and_repeats_gray() -> None:
    preset = resolve_preprocessing("mnist", 4)
    pixels = torch.arange(16, dtype=torch.uint8).reshape(1, 1, 4, 4) * 10
    out = preset.finish_batch(pixels)
    mean, std = NORMALIZATIONS["mnist"]
    expected = (pixels.float() / 255 - mean[0]) / std[0]
    assert out.shape == (1, 3, 4, 4)
    for channel in range(3):
        torch.testing.assert_close(out[:, channel:channel + 1], expected)


def test_image_files_resize_the_shorter_side_and_crop_the_centre() -> None:
    from PIL import Image

    preset = resolve_preprocessing("imagefolder", 16)  # resize 18, centre crop 16
    image = Image.new("RGB", (40, 30), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 4, 30))  # a blue band the centre crop cuts off
    evaluated = preset.file_transform(train=False)(image)
    assert evaluated.dtype == torch.uint8 and evaluated.shape == (3, 16, 16)
    assert evaluated[2].max() == 0  # no blue left
    torch.manual_seed(0)
    assert preset.file_transform(train=True)(image).shape == (3, 16, 16)
    # The reference recipe for users gives what the evaluation pipeline gives.
    torch.testing.assert_close(preprocess_image(image, preset.to_metadata()),
                               preset.finish_batch(evaluated[None]))
