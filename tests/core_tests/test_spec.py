"""The job spec's dataset, preprocessing and fine_tune sections; the catalog's presets."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from core.catalog import AUGMENTATIONS, CHECKPOINT_FORMATS, DATASETS, NORMALIZATIONS
from core.spec import JobSpec


def _spec(dataset: dict[str, Any] | None = None, **sections: Any) -> JobSpec:
    return JobSpec.model_validate({
        "name": "t", "model": {"arch": "cifar_resnet20"},
        "dataset": dataset or {"name": "fashion_mnist", "root": "fashion-mnist"},
        "objective": {"constraints": {"max_flops_ratio": 0.5}}, **sections})


def test_every_preset_names_known_statistics_and_augmentation() -> None:
    assert {"mnist", "fashion_mnist"} <= set(DATASETS)
    for info in DATASETS.values():
        assert info.normalization in NORMALIZATIONS and info.augmentation in AUGMENTATIONS
        assert info.channels in (1, 3)
    assert set(CHECKPOINT_FORMATS) == {"safetensors", "onnx", "pt2", "torchscript"}


def test_idx_datasets_need_a_root_and_keep_the_defaults() -> None:
    spec = _spec()
    assert spec.image_size() == 28 and spec.num_classes() == 10
    assert spec.dataset.preprocessing.normalization is None  # the preset decides
    with pytest.raises(ValidationError, match="needs 'root'"):
        _spec({"name": "mnist"})


@pytest.mark.parametrize(("preprocessing", "message"), [
    ({"normalization": "custom"}, "mean and std"),
    ({"mean": [0.5]}, "mean and std"),
    ({"mean": [0.5, 0.5, 0.5], "std": [0.2]}, "same length"),
    ({"mean": [0.5], "std": [0.0]}, "std must be > 0"),
    ({"normalization": "cifar", "mean": [0.5], "std": [0.2]}, "custom"),
    ({"resize": 40}, "imagefolder"),
    ({"augmentation": "cutmix"}, "augmentation"),
    ({"channel": 1}, "channel"),
])
def test_bad_preprocessing_is_refused(preprocessing: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _spec({"name": "fashion_mnist", "root": "f", "preprocessing": preprocessing})


def test_one_channel_needs_an_architecture_built_for_it() -> None:
    gray = {"name": "fashion_mnist", "root": "f", "preprocessing": {"channels": 1}}
    with pytest.raises(ValidationError, match="in_channels"):
        _spec(gray)
    spec = JobSpec.model_validate({"name": "t", "dataset": gray, "model": {
        "arch": "cifar_resnet20", "arguments": {"in_channels": 1}},
        "objective": {"constraints": {"max_flops_ratio": 0.5}}})
    assert spec.dataset.input_channels() == 1
    with pytest.raises(ValidationError, match="RGB"):
        _spec({"name": "cifar10", "root": "c", "preprocessing": {"channels": 1}})


def test_trial_budget_is_epochs_or_steps_not_both() -> None:
    assert _spec().fine_tune.trial_budget() == {"epochs": 2}
    steps = _spec(fine_tune={"trial_steps": 300})
    assert steps.fine_tune.trial_budget() == {"epochs": 0, "steps": 300}
    assert _spec(fine_tune={"trial_steps": 300, "trial_epochs": 0}) == steps
    with pytest.raises(ValidationError, match="not both"):
        _spec(fine_tune={"trial_steps": 300, "trial_epochs": 1})


@pytest.mark.parametrize("sections", [
    {},
    {"fine_tune": {"trial_steps": 300, "final_epochs": 3, "optimizer": "adamw"}},
    {"dataset": {"name": "imagefolder", "root": "pets", "image_size": 96, "preprocessing": {
        "normalization": "custom", "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.2],
        "augmentation": "random_resized_crop"}}, "model": {
        "arch": "resnet18", "num_classes": 37, "arguments": {"small_input": True}}},
    {"objective": {"mode": "pareto", "pareto_memory": True,
                   "pick": {"limit": {"max_latency_ratio": 0.6}}},
     "latency": {"runtime": "onnxruntime", "batch_size": 8, "threads": 2}},
    {"objective": {"mode": "weighted", "weights": {"latency": 1.0, "memory": 0.2}},
     "search": {"sampler": "gp", "n_trials": 7, "fidelity": {"mode": "single"}}},
])
def test_a_stored_spec_validates_again_as_the_same_spec(sections: dict[str, Any]) -> None:
    """The server stores ``model_dump(mode="json")`` and a worker validates that again: a
    spec that does not survive the trip ends every worker that claims its job."""
    spec = _spec(**sections)
    assert JobSpec.model_validate(spec.model_dump(mode="json")) == spec


def test_training_settings_carry_the_recipe() -> None:
    settings = _spec(fine_tune={"optimizer": "adamw", "warmup_epochs": 1,
                                "scale_learning_rate": False, "channels_last": False,
                                "decay_norm_and_bias": True}).fine_tune.training_settings()
    assert settings["optimizer"] == "adamw" and settings["warmup_epochs"] == 1
    assert settings["reference_batch_size"] is None and settings["channels_last"] is False
    assert settings["decay_norm_and_bias"] is True
    assert _spec().fine_tune.training_settings()["reference_batch_size"] == 64
    assert _spec().fine_tune.trial_eval_images == 10_000
