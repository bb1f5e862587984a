"""The scoring contract on a small untrained ResNet: shapes, no side effects, plumbing."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from core.errors import InvalidPlanError, InvalidSpecError
from models.architectures import build_model
from models.datasets import DataSplits, load_dataset
from models.importance import (
    METHODS,
    ImportanceScores,
    ScoreImportance,
    SqueezeExcitationGate,
    score,
)
from models.plan import PrunePlan, apply_plan, prunable_groups, removable_blocks


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def splits() -> DataSplits:
    return load_dataset("digits", image_size=16)


def _resnet20() -> nn.Module:
    torch.manual_seed(0)
    return build_model("cifar_resnet20")


FAST = {"attention": {"batches": 3}, "pls": {}, "magnitude": {}, "taylor": {"batches": 1}}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_scores_every_channel_group_and_block(method: str,
                                                           splits: DataSplits) -> None:
    model = _resnet20()
    x = splits.example_input()
    groups = prunable_groups(model, x)
    blocks = removable_blocks(model, x)

    scores = score(model, splits, method, **FAST[method])

    assert scores.method == method
    assert set(scores.channel) == set(scores.group) == {g.name for g in groups}
    assert set(scores.block) == {b.name for b in blocks}
    for group in groups:
        values = scores.channel[group.name]
        assert values.shape == (group.channels,)
        assert torch.isfinite(values).all()
    assert all(isinstance(v, float) for v in [*scores.group.values(), *scores.block.values()])
    assert scores.seconds > 0
    assert set(FAST[method]) <= set(scores.settings)


@pytest.mark.parametrize("method", METHODS)
def test_scoring_leaves_the_model_exactly_as_it_was(method: str, splits: DataSplits) -> None:
    model = _resnet20()
    model.train()
    model.layer1[0].conv1.weight.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    probe = torch.randn(4, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        expected = model(probe)
    model.train()

    score(model, splits, method, **FAST[method])

    assert model.training and all(module.training for module in model.modules())
    assert not model.layer1[0].conv1.weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters()
               if n != "layer1.0.conv1.weight")
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # BN stats too
    assert all(not module._forward_hooks for module in model.modules())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(probe), expected)


def test_attention_gates_are_trained_and_std_pooling_differs(splits: DataSplits) -> None:
    model = _resnet20()
    untrained = score(model, splits, "attention", batches=0)
    trained = score(model, splits, "attention", batches=5)
    std = score(model, splits, "attention", batches=5, pooling="std")

    name = "layer2.1.conv1"
    assert not torch.allclose(untrained.channel[name], trained.channel[name])
    assert not torch.allclose(trained.channel[name], std.channel[name])
    assert std.settings["pooling"] == "std"


def test_squeeze_excitation_gate_shapes_and_initial_value() -> None:
    gate = SqueezeExcitationGate(8, reduction=4, pooling="std", initial_excitation=0.8)
    features = torch.randn(5, 8, 6, 6)

    excitation = gate(features)

    assert excitation.shape == (5, 8)
    assert gate.squeeze_to_hidden.out_features == 4  # at least four hidden units
    assert excitation.mean().item() == pytest.approx(0.8, abs=0.05)
    with pytest.raises(InvalidSpecError, match="pooling"):
        SqueezeExcitationGate(8, pooling="max")


def test_unknown_method_setting_group_or_block_is_refused(splits: DataSplits) -> None:
    model = _resnet20()
    with pytest.raises(InvalidSpecError, match="unknown importance method"):
        score(model, splits, "random")
    with pytest.raises(InvalidSpecError, match="reduction"):
        score(model, splits, "pls", reduction=4)
    with pytest.raises(InvalidSpecError, match="not a convolution"):
        score(model, splits, "magnitude", groups=["layer1.0.bn1"])
    with pytest.raises(InvalidSpecError, match="not a module"):
        score(model, splits, "magnitude", blocks=["layer9.0"])


def test_explicit_groups_and_blocks_limit_what_is_scored(splits: DataSplits) -> None:
    scores = score(_resnet20(), splits, "pls", groups=["layer1.0.conv1", "conv1"],
                   blocks=["layer2.1"])

    assert set(scores.channel) == {"layer1.0.conv1", "conv1"}
    assert set(scores.block) == {"layer2.1"}


def test_scores_survive_a_json_round_trip(splits: DataSplits) -> None:
    scores = score(_resnet20(), splits, "magnitude")

    again = ImportanceScores.from_dict(json.loads(json.dumps(scores.to_dict())))

    assert again.method == scores.method and again.settings == scores.settings
    assert again.group == scores.group and again.block == scores.block
    assert all(torch.allclose(again.channel[n], scores.channel[n]) for n in scores.channel)
    with pytest.raises(InvalidSpecError, match="incomplete"):
        ImportanceScores.from_dict({"method": "pls"})


def _synthetic_scores(model: nn.Module, x: torch.Tensor) -> ImportanceScores:
    generator = torch.Generator().manual_seed(3)
    groups = prunable_groups(model, x)
    channel = {g.name: torch.rand(g.channels, generator=generator) for g in groups}
    return ImportanceScores("pls", channel, {g.name: 0.0 for g in groups}, {}, 0.0)


@pytest.mark.parametrize("group_name, weight_of", [
    ("layer1.1.conv1", lambda m: m.layer1[1].conv1.weight),
    ("conv1", lambda m: m.conv1.weight),  # a residual stream coupling four convs
    ("layer3.0.conv2", lambda m: m.layer3[0].downsample[0].weight),  # a non-root member
])
def test_apply_plan_with_score_importance_removes_the_lowest_scored_channels(
        group_name: str, weight_of, splits: DataSplits) -> None:  # type: ignore[no-untyped-def]
    model = _resnet20()
    x = splits.example_input()
    scores = _synthetic_scores(model, x)
    original = weight_of(model).detach().clone()
    values = scores.channel[group_name]
    keep = len(values) // 2
    expected = sorted(torch.argsort(values, descending=True)[:keep].tolist())

    apply_plan(model, PrunePlan(keep={group_name: keep}), x,
               importance=ScoreImportance(model, scores))

    assert torch.equal(weight_of(model).detach(), original[expected])


def test_score_importance_refuses_scores_of_another_width(splits: DataSplits) -> None:
    model = _resnet20()
    x = splits.example_input()
    scores = _synthetic_scores(model, x)
    scores.channel["layer1.1.conv1"] = torch.rand(8)

    with pytest.raises(InvalidPlanError, match="cover 8 channels"):
        apply_plan(model, PrunePlan(keep={"layer1.1.conv1": 4}), x,
                   importance=ScoreImportance(model, scores))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", METHODS)
def test_every_method_scores_on_cuda_with_the_splits_on_the_gpu(method: str,
                                                                splits: DataSplits) -> None:
    """The worker keeps small datasets on the GPU (``DataSplits.to_device``): every
    batch, labels included, is then a CUDA tensor."""
    on_gpu = splits.to_device("cuda")
    assert on_gpu is not splits
    model = _resnet20().cuda()
    scores = score(model, on_gpu, method, **FAST[method])
    on_cpu = score(_resnet20(), splits, method, **FAST[method])
    assert set(scores.channel) == set(on_cpu.channel) and set(scores.block) == set(on_cpu.block)
    for name, values in scores.channel.items():
        assert values.device.type == "cpu" and torch.isfinite(values).all()
        if method in ("magnitude", "pls"):  # deterministic given the weights and the data
            assert torch.allclose(values, on_cpu.channel[name], rtol=1e-3, atol=1e-4), name
    assert next(model.parameters()).device.type == "cuda"
