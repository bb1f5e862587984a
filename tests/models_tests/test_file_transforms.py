"""Image-file augmentation drawn from a per-sample ``random.Random``: torchvision's
distributions, PIL's arithmetic, no use of torch's global generator."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from core.spec import PreprocessingSpec
from models.data.file_transforms import (
    RESIZED_CROP_RATIO,
    RESIZED_CROP_SCALE,
    resized_crop_box,
)
from models.data.presets import resolve_preprocessing


def _photo(width: int = 40, height: int = 30, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_resized_crop_boxes_follow_torchvisions_distribution() -> None:
    """Areas and aspect ratios of many boxes against torchvision's own get_params."""
    width, height = 64, 48
    ours = [resized_crop_box(width, height, RESIZED_CROP_SCALE, RESIZED_CROP_RATIO,
                             random.Random(seed)) for seed in range(3000)]
    torch.manual_seed(0)
    theirs = [transforms.RandomResizedCrop.get_params(
        torch.zeros(3, height, width), list(RESIZED_CROP_SCALE), list(RESIZED_CROP_RATIO))
        for _ in range(3000)]
    for left, top, box_width, box_height in ours:
        assert 0 <= left <= width - box_width and 0 <= top <= height - box_height
    ours_area = np.array([w * h for _, _, w, h in ours]) / (width * height)
    theirs_area = np.array([w * h for _, _, h, w in theirs]) / (width * height)
    ours_ratio = np.log([w / h for _, _, w, h in ours])
    theirs_ratio = np.log([w / h for _, _, h, w in theirs])
    for mine, reference in ((ours_area, theirs_area), (ours_ratio, theirs_ratio)):
        assert abs(mine.mean() - reference.mean()) < 0.03
        assert abs(np.quantile(mine, 0.9) - np.quantile(reference, 0.9)) < 0.05


def test_resized_crop_is_the_box_resampled_to_the_input_size() -> None:
    preset = resolve_preprocessing("imagefolder", 16)
    assert preset.augmentation == "random_resized_crop" and preset.flip
    transform = preset.file_transform(train=True)
    image = _photo()
    out = transform(image, random.Random(5))
    assert out.dtype == torch.uint8 and out.shape == (3, 16, 16)
    # The same draws, made by hand: the box, resized with PIL's bilinear filter, maybe flipped.
    draws = random.Random(5)
    left, top, width, height = resized_crop_box(40, 30, RESIZED_CROP_SCALE,
                                                RESIZED_CROP_RATIO, draws)
    expected = np.asarray(image.resize((16, 16), Image.Resampling.BILINEAR,
                                       box=(left, top, left + width, top + height)))
    if draws.random() < 0.5:
        expected = expected[:, ::-1]
    assert torch.equal(out, torch.from_numpy(np.ascontiguousarray(expected.transpose(2, 0, 1))))


def test_pad_crop_shifts_the_evaluation_image_over_black() -> None:
    preset = resolve_preprocessing("imagefolder", 16, PreprocessingSpec(
        augmentation="pad_crop", flip=False, padding=3))
    image = _photo()
    evaluated = preset.file_transform(train=False)(image)
    offsets = set()
    for seed in range(60):
        out = preset.file_transform(train=True)(image, random.Random(seed))
        padded = torch.nn.functional.pad(evaluated, (3, 3, 3, 3))
        matches = [(top, left) for top in range(7) for left in range(7)
                   if torch.equal(out, padded[:, top:top + 16, left:left + 16])]
        assert matches, f"seed {seed}: not a shifted copy of the evaluation image"
        offsets.add(matches[0])
    assert len(offsets) > 15  # offsets spread over the 7 x 7 possible ones


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_seed_gives_the_same_augmentation_whatever_torch_draws_meanwhile(seed: int) -> None:
    preset = resolve_preprocessing("imagefolder", 16)
    transform = preset.file_transform(train=True)
    image = _photo(seed=seed)
    first = transform(image, random.Random(seed))
    torch.rand(100)  # the global generator moves on: no effect
    assert torch.equal(transform(image, random.Random(seed)), first)
    others = {transform(image, random.Random(other)).sum().item() for other in range(10, 20)}
    assert len(others) > 5


def test_flip_mirrors_about_half_the_samples() -> None:
    preset = resolve_preprocessing("imagefolder", 16, PreprocessingSpec(augmentation="none"))
    image = _photo()
    plain = preset.file_transform(train=False)(image)
    flipped = [torch.equal(preset.file_transform(train=True)(image, random.Random(seed)),
                           plain.flip(2)) for seed in range(200)]
    assert 70 < sum(flipped) < 130
