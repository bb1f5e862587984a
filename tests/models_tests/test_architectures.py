from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from core.catalog import ARCHITECTURES
from core.errors import InvalidSpecError, UnknownArchitectureError
from models import build_model, list_architectures
from models.architectures import residual_blocks


def _arguments(name: str) -> dict:
    info = ARCHITECTURES[name]
    extra = {"small_input": True} if "small_input" in info.arguments else {}
    return {"num_classes": 7, **extra}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_catalogued_architecture_builds_and_runs_small_inputs(name: str) -> None:
    model = build_model(name, **_arguments(name)).eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 7)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_catalogued_architecture_takes_one_channel_grayscale(name: str) -> None:
    stems = ([{"small_input": True}, {"small_input": False}]
             if "small_input" in ARCHITECTURES[name].arguments else [{}])
    for stem in stems:
        model = build_model(name, num_classes=7, in_channels=1, **stem).eval()
        with torch.inference_mode():
            out = model(torch.randn(2, 1, 32, 32))
        assert out.shape == (2, 7)


def test_list_architectures_describes_each_one() -> None:
    listed = {entry["name"]: entry for entry in list_architectures()}
    assert set(listed) == set(ARCHITECTURES)
    for entry in listed.values():
        assert entry["description"] and entry["default_input_size"] > 0
        assert "num_classes" in entry["arguments"]


def test_unknown_architecture_and_argument_are_named() -> None:
    with pytest.raises(UnknownArchitectureError, match="nope"):
        build_model("nope")
    with pytest.raises(InvalidSpecError, match="depth_multiplier"):
        build_model("cifar_resnet20", depth_multiplier=2)


def test_residual_blocks_are_those_with_identity_shortcuts() -> None:
    # ResNet-20: 9 blocks, the first of stages 2 and 3 downsample.
    blocks = residual_blocks(build_model("cifar_resnet20"))
    assert len(blocks) == 7
    assert "layer2.0" not in blocks and "layer2.1" in blocks
    assert residual_blocks(build_model("vgg11_bn")) == {}


def test_catalog_is_torch_free() -> None:
    code = ("import sys, core.catalog, core.errors, core.spec; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_worker_starts_without_scikit_learn_or_torchvision() -> None:
    # Together they cost a worker several seconds of start-up; only PLS scoring and the
    # torchvision networks need them, and those import them when they run.
    code = ("import sys, workers.worker; "
            "loaded = [m for m in ('sklearn', 'torchvision') if m in sys.modules]; "
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_fresh_process_finds_the_blocks_of_torchvision_networks() -> None:
    # residual_blocks() looks for torchvision's blocks only once torchvision is imported:
    # building the network imports it, in a process that never did before.
    code = ("import sys; from models.architectures import build_model, residual_blocks; "
            "assert 'torchvision' not in sys.modules; "
            "blocks = residual_blocks(build_model('resnet18', num_classes=10)); "
            "assert sorted(blocks) == ['layer1.0', 'layer1.1', 'layer2.1', 'layer3.1', "
            "'layer4.1'], sorted(blocks); "
            "blocks = residual_blocks(build_model('mobilenet_v2', num_classes=10)); "
            "assert len(blocks) == 10, sorted(blocks)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_package_re_exports_functions_even_after_submodule_imports() -> None:
    import models.measure
    import models.train
    from models import measure_model, train_model

    assert measure_model is models.measure.measure_model
    assert train_model is models.train.train_model
