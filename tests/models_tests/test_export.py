from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from torch.utils.data import Subset

from core.errors import CheckpointError
from models.architectures import build_model
from models.checkpoints import save_weights, sha256_file
from models.datasets import DataSplits, load_dataset
from models.export import (
    FORMAT_VERSION,
    PREPROCESSING_KEY,
    export_onnx,
    export_program,
    export_torchscript,
    load_pruned,
    read_pruned_metadata,
    save_pruned,
)
from models.plan import PrunePlan, apply_plan
from models.train import TrainConfig, fine_tune, train_model

INPUT_SHAPE = (3, 16, 16)
ARCH_ARGUMENTS = {"num_classes": 10, "width": 16}
# Different keep counts per group, and two dropped blocks: every stage changes shape.
PLAN = PrunePlan(
    keep={"conv1": 12, "layer1.0.conv1": 5, "layer1.2.conv1": 9, "layer2.0.conv1": 20,
          "layer2.0.conv2": 24, "layer3.0.conv1": 40, "layer3.0.conv2": 48,
          "layer3.2.conv1": 17},
    drop_blocks=["layer1.1", "layer3.1"],
)


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    torch.set_num_threads(1)
    splits = load_dataset("digits", image_size=16, seed=0)
    return dataclasses.replace(splits, train=Subset(splits.train, range(384)))


@pytest.fixture(scope="module")
def pruned(digits: DataSplits) -> torch.nn.Module:
    """cifar_resnet20 trained a little, pruned by PLAN, fine-tuned a little."""
    torch.manual_seed(0)
    model = build_model("cifar_resnet20", **ARCH_ARGUMENTS)
    train_model(model, digits, TrainConfig(epochs=1, learning_rate=0.05), eval_split=None)
    apply_plan(model, PLAN, torch.zeros(1, *INPUT_SHAPE))
    fine_tune(model, digits, 1, eval_split=None)
    return model.eval()


def _inputs(batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, *INPUT_SHAPE, generator=torch.Generator().manual_seed(batch))


def _outputs(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(inputs)


def _save(model: torch.nn.Module, path: Path, **changes: object) -> str:
    arguments = {"arch": "cifar_resnet20", "arch_arguments": ARCH_ARGUMENTS, "plan": PLAN,
                 "input_shape": INPUT_SHAPE, "metrics": {"accuracy": 0.9, "latency_ms": 1.5}}
    return save_pruned(model, path, **{**arguments, **changes})


def test_the_plan_really_changes_every_stage(pruned: torch.nn.Module) -> None:
    assert pruned.conv1.out_channels == 12
    assert pruned.layer1[0].conv1.out_channels == 5
    assert isinstance(pruned.layer1[1], torch.nn.Identity)
    assert isinstance(pruned.layer3[1], torch.nn.Identity)
    assert pruned.fc.in_features == 48


def test_load_pruned_rebuilds_a_model_with_the_same_outputs(pruned: torch.nn.Module,
                                                            digits: DataSplits,
                                                            tmp_path: Path) -> None:
    path = tmp_path / "best.safetensors"
    digest = _save(pruned, path)
    assert digest == sha256_file(path)
    assert os.listdir(tmp_path) == ["best.safetensors"]

    loaded = load_pruned(path)
    assert not loaded.training
    for inputs in (_inputs(4), next(iter(digits.loader("test", 64)))[0]):
        difference = (_outputs(loaded, inputs) - _outputs(pruned, inputs)).abs().max().item()
        assert difference < 1e-5
    assert loaded.topiary_metadata == read_pruned_metadata(path)
    assert loaded.topiary_metadata["plan"] == PLAN.to_dict()


def test_metadata_round_trips_as_plain_data(pruned: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "best.safetensors"
    _save(pruned, path, metrics={"accuracy": 0.875, "flops": 1234567, "notes": ["a"]})
    metadata = read_pruned_metadata(path)
    assert metadata == {
        "format_version": FORMAT_VERSION,
        "arch": "cifar_resnet20",
        "arch_arguments": ARCH_ARGUMENTS,
        "plan": PLAN.to_dict(),
        "input_shape": list(INPUT_SHAPE),
        "metrics": {"accuracy": 0.875, "flops": 1234567, "notes": ["a"]},
        "preprocessing": None,  # not given (and absent from files written before it existed)
    }
    with safetensors.safe_open(str(path), "pt") as handle:
        raw = handle.metadata()
    assert all(isinstance(value, str) for value in raw.values())
    assert raw["topiary.arch"] == "cifar_resnet20"
    assert json.loads(raw["topiary.plan"]) == PLAN.to_dict()


def test_save_refuses_a_model_that_does_not_match_its_plan(pruned: torch.nn.Module,
                                                           tmp_path: Path) -> None:
    other_plan = dataclasses.replace(PLAN, keep={**PLAN.keep, "conv1": 8})
    path = tmp_path / "best.safetensors"
    with pytest.raises(CheckpointError, match=r"conv1.weight: file has \[12, 3, 3, 3\], "
                                              r"model expects \[8, 3, 3, 3\]"):
        _save(pruned, path, plan=other_plan)
    with pytest.raises(CheckpointError, match="JSON"):
        _save(pruned, path, metrics={"accuracy": float("nan")})
    assert os.listdir(tmp_path) == []


def test_a_tampered_plan_is_caught_at_load_with_the_offending_keys(pruned: torch.nn.Module,
                                                                   tmp_path: Path) -> None:
    path = tmp_path / "best.safetensors"
    _save(pruned, path)
    with safetensors.safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    metadata["topiary.plan"] = json.dumps({**PLAN.to_dict(), "drop_blocks": ["layer1.1"]})
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match=r"missing from the file.*layer3\.1\.conv1\.weight"):
        load_pruned(path)


def test_files_that_are_not_pruned_checkpoints_are_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_weights(build_model("cifar_resnet20"), plain)
    with pytest.raises(CheckpointError, match="not a Topiary pruned checkpoint"):
        load_pruned(plain)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 4)
    with pytest.raises(CheckpointError, match="too short"):
        read_pruned_metadata(garbage)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_pruned_metadata(tmp_path / "missing.safetensors")


def test_a_newer_format_version_is_refused(pruned: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "best.safetensors"
    _save(pruned, path)
    with safetensors.safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    metadata["topiary.format_version"] = str(FORMAT_VERSION + 1)
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match="Upgrade Topiary"):
        load_pruned(path)


def test_onnx_export_agrees_with_pytorch_at_any_batch_size(pruned: torch.nn.Module,
                                                           tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    path = tmp_path / "best.onnx"
    pruned.train()
    export_onnx(pruned, path, INPUT_SHAPE)
    assert pruned.training
    pruned.eval()
    assert os.listdir(tmp_path) == ["best.onnx"]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    for batch in (1, 5):
        inputs = _inputs(batch)
        (logits,) = session.run(None, {"input": inputs.numpy()})
        np.testing.assert_allclose(logits, _outputs(pruned, inputs).numpy(), atol=1e-4)


def test_torch_export_program_loads_without_our_code_or_a_warning_and_agrees(
        pruned: torch.nn.Module, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "best.pt2"
    export_program(pruned, path, INPUT_SHAPE, preprocessing={"mean": [0.5]})
    assert os.listdir(tmp_path) == ["best.pt2"]
    # Written through its temporary name without torch's "Expect archive file" warning.
    assert "Expect archive file" not in capfd.readouterr().err
    extra = {PREPROCESSING_KEY: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        program = torch.export.load(str(path), extra_files=extra).module()
    assert json.loads(extra[PREPROCESSING_KEY]) == {"mean": [0.5]}
    for batch in (1, 5):
        inputs = _inputs(batch)
        torch.testing.assert_close(_outputs(program, inputs), _outputs(pruned, inputs),
                                   atol=1e-4, rtol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_export_loads_without_our_code_and_agrees(pruned: torch.nn.Module,
                                                              tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    export_torchscript(pruned, path, INPUT_SHAPE, preprocessing={"mean": [0.5]})
    assert os.listdir(tmp_path) == ["best.pt"]
    extra = {PREPROCESSING_KEY: ""}
    scripted = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra[PREPROCESSING_KEY]) == {"mean": [0.5]}
    for batch in (1, 5):
        inputs = _inputs(batch)
        torch.testing.assert_close(_outputs(scripted, inputs), _outputs(pruned, inputs),
                                   atol=1e-4, rtol=0)


class _DataDependentBranch(torch.nn.Module):
    """torch.export cannot capture a branch on a tensor's value; TorchScript tracing can."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        features = self.conv(inputs)
        if features.mean() > 1e6:
            return features * 2
        return features.flatten(1)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_onnx_export_falls_back_to_the_tracing_exporter(tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = _DataDependentBranch().eval()
    path = tmp_path / "branch.onnx"
    export_onnx(model, path, (3, 8, 8))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = torch.randn(3, 3, 8, 8)
    (outputs,) = session.run(None, {"input": inputs.numpy()})
    np.testing.assert_allclose(outputs, _outputs(model, inputs).numpy(), atol=1e-4)


def _as_the_readme_says(image_path: str, meta: dict) -> torch.Tensor:
    """README, "Feeding one image": the preprocessing metadata and torchvision, nothing else."""
    from PIL import Image
    from torchvision import transforms

    image = Image.open(image_path).convert("L" if meta["color"] == "grayscale" else "RGB")
    tensor = transforms.Compose([transforms.Resize(meta["resize"]),
                                 transforms.CenterCrop(meta["crop"]),
                                 transforms.ToTensor()])(image)
    tensor = tensor.expand(meta["channels"], -1, -1)  # gray: one channel, repeated
    return transforms.Normalize(meta["mean"], meta["std"])(tensor).unsqueeze(0)


def _test_images(dataset: str, splits: DataSplits, folder: Path) -> list[str]:
    """The test split's first 12 images as files a user would hold."""
    if dataset == "imagefolder":
        return [path for path, _ in splits.test.samples[:12]]
    from PIL import Image

    paths = []
    for index, image in enumerate(splits.test.images[:12, 0].numpy()):
        paths.append(str(folder / f"{index}.png"))
        Image.fromarray(image).save(paths[-1])
    return paths


@pytest.mark.parametrize("dataset", ["imagefolder", "fashion_mnist"])
def test_an_image_preprocessed_as_the_metadata_says_gets_the_evaluations_logits(
        dataset: str, image_folder: Path, idx_folder: Path, tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    root = image_folder if dataset == "imagefolder" else idx_folder
    splits = load_dataset(dataset, image_size=16 if dataset == "imagefolder" else None,
                          root=root, loader_workers=0)
    torch.manual_seed(0)
    model = build_model("cifar_resnet20", num_classes=splits.num_classes)
    train_model(model, splits, TrainConfig(epochs=1, batch_size=16), eval_split=None)
    plan = PrunePlan(keep={"conv1": 12, "layer2.0.conv1": 20})
    apply_plan(model, plan, splits.example_input())
    path = tmp_path / "pruned.safetensors"
    save_pruned(model, path, arch="cifar_resnet20",
                arch_arguments={"num_classes": splits.num_classes}, plan=plan,
                input_shape=splits.input_shape, metrics={},
                preprocessing=splits.export_metadata())
    loaded = load_pruned(path)
    meta = loaded.topiary_metadata["preprocessing"]
    assert meta == splits.export_metadata()
    assert meta["labels"] == list(splits.labels or ())  # output i is the i-th label
    inputs, _ = next(iter(splits.loader("test", 12)))  # what the job's evaluation runs
    evaluated = _outputs(model.eval(), inputs)
    folder = tmp_path / "user"
    folder.mkdir()
    one_by_one = torch.cat([_outputs(loaded, _as_the_readme_says(image, meta))
                            for image in _test_images(dataset, splits, folder)])
    torch.testing.assert_close(one_by_one, evaluated, atol=1e-4, rtol=0)

    onnx_path = tmp_path / "pruned.onnx"
    export_onnx(loaded, onnx_path, splits.input_shape, preprocessing=meta)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    stored = session.get_modelmeta().custom_metadata_map[PREPROCESSING_KEY]
    assert json.loads(stored) == meta
    (logits,) = session.run(None, {"input": inputs.numpy()})
    np.testing.assert_allclose(logits, evaluated.numpy(), atol=1e-4)
