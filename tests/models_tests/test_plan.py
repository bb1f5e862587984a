"""Prunable groups, removable blocks, plans, and real channel surgery on real networks."""

from __future__ import annotations

import json

import pytest
import torch
import torch_pruning as tp
from torch import nn

from core.errors import InvalidPlanError
from models import apply_plan, build_model, prunable_groups
from models.plan import PrunePlan, removable_blocks


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _resnet20() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("cifar_resnet20"), torch.randn(2, 3, 16, 16)


def _vgg11() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("vgg11_bn"), torch.randn(2, 3, 16, 16)


def _mobilenet() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("mobilenet_v2", num_classes=10, small_input=True), torch.randn(2, 3, 16, 16)


def _resnet18() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("resnet18", num_classes=10, small_input=True), torch.randn(2, 3, 16, 16)


def _param_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups == module.in_channels > 1


# ---------------------------------------------------------------- group discovery


def test_resnet20_groups_couple_each_stages_residual_stream() -> None:
    model, x = _resnet20()
    groups = prunable_groups(model, x)
    by_name = {group.name: group for group in groups}
    # 9 blocks -> 9 inner groups (conv1 of each block) + one residual stream per stage.
    assert len(groups) == 12
    names = [name for name, _ in model.named_modules()]
    assert [g.name for g in groups] == sorted(by_name, key=names.index)

    stem = by_name["conv1"]
    assert stem.pruned_convs == ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]
    assert {"bn1", "layer1.0.bn2", "layer2.0.conv1", "layer2.0.downsample.0"} <= set(stem.coupled)
    assert stem.stage == "layer1" and stem.block is None and stem.channels == 16

    stream3 = by_name["layer3.0.conv2"]
    assert set(stream3.pruned_convs) == {"layer3.0.conv2", "layer3.0.downsample.0",
                                         "layer3.1.conv2", "layer3.2.conv2"}
    assert "fc" in stream3.coupled  # its inputs shrink with the stream
    assert stream3.stage == "layer3" and stream3.channels == 64

    inner = by_name["layer2.1.conv1"]
    assert inner.coupled == ["layer2.1.conv1", "layer2.1.bn1", "layer2.1.conv2"]
    assert inner.block == "layer2.1" and inner.stage == "layer2"
    assert by_name["layer2.0.conv1"].block is None  # layer2.0 has a downsampling shortcut

    assert all(name not in by_name for name in ("fc", "layer1.0.conv2", "layer3.1.conv2"))


def test_min_keep_follows_ratio_and_round_to() -> None:
    model, x = _resnet20()
    plain = {g.name: g.min_keep for g in prunable_groups(model, x, min_keep_ratio=0.1)}
    assert plain["conv1"] == 2 and plain["layer2.1.conv1"] == 4 and plain["layer3.1.conv1"] == 7
    rounded = {g.name: g.min_keep for g in prunable_groups(model, x, round_to=8,
                                                           min_keep_ratio=0.3)}
    assert rounded["conv1"] == 8 and rounded["layer2.1.conv1"] == 16
    assert rounded["layer3.1.conv1"] == 24
    whole = {g.name: g.min_keep for g in prunable_groups(model, x, round_to=32)}
    assert whole["conv1"] == 16  # never above the group's channels


def test_vgg11_has_one_group_per_conv_and_stages_by_resolution() -> None:
    model, x = _vgg11()
    groups = prunable_groups(model, x)
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert [g.name for g in groups] == convs
    assert all(g.block is None for g in groups)
    assert groups[-1].coupled == [groups[-1].name, "features.26", "classifier"]
    stages = [g.stage for g in groups]
    assert stages == ["features.0", "features.3", "features.7", "features.7",
                      "features.14", "features.14", "features.21", "features.21"]
    assert removable_blocks(model, x) == []


def test_mobilenet_depthwise_convs_are_coupled_with_their_producer() -> None:
    model, x = _mobilenet()
    groups = prunable_groups(model, x)
    modules = dict(model.named_modules())
    # stem + 16 expansion convs + one projection stream per stage of the (t, c, n, s)
    # table (7) + the final 1x1 conv.
    assert len(groups) == 25
    assert not any(_is_depthwise(modules[g.name]) for g in groups)
    owners = {}
    for group in groups:
        for conv in group.pruned_convs:
            owners.setdefault(conv, []).append(group.name)
    depthwise = [name for name, m in modules.items() if _is_depthwise(m)]
    assert len(depthwise) == 17
    for name in depthwise:
        assert len(owners[name]) == 1, name
        owner = modules[owners[name][0]]
        assert owner.out_channels == modules[name].in_channels
    assert owners["features.1.conv.0.0"] == ["features.0.0"]
    assert owners["features.5.conv.1.0"] == ["features.5.conv.0.0"]
    assert {g.name: g.block for g in groups}["features.5.conv.0.0"] == "features.5"


def test_resnet18_groups_and_removable_blocks() -> None:
    model, x = _resnet18()
    groups = prunable_groups(model, x)
    assert len(groups) == 12  # 8 inner groups + 4 residual streams
    assert [g.stage for g in groups].count("layer1") == 3  # stem stream + 2 inner
    blocks = removable_blocks(model, x)
    assert [(b.name, b.stage, b.channels) for b in blocks] == [
        ("layer1.0", "layer1", 64), ("layer1.1", "layer1", 64), ("layer2.1", "layer2", 128),
        ("layer3.1", "layer3", 256), ("layer4.1", "layer4", 512)]


def test_discovery_leaves_the_model_untouched() -> None:
    model, x = _resnet20()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prunable_groups(model, x)
    removable_blocks(model, x)
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics too


# ---------------------------------------------------------------- plans as data


def test_uniform_plan_keeps_the_same_fraction_rounded() -> None:
    model, x = _resnet18()
    groups = prunable_groups(model, x)
    half = PrunePlan.uniform(groups, 0.5)
    assert half.keep == {g.name: g.channels // 2 for g in groups}
    tiny = PrunePlan.uniform(groups, 0.01, min_keep_ratio=0.25)
    assert tiny.keep == {g.name: g.channels // 4 for g in groups}
    rounded = PrunePlan.uniform(groups, 0.3, round_to=8)
    assert rounded.round_to == 8
    assert all(count % 8 == 0 for count in rounded.keep.values())
    assert rounded.keep["conv1"] == 16  # 19.2 -> nearest multiple of 8
    assert PrunePlan.uniform(groups, 1.0).is_unpruned()
    with pytest.raises(InvalidPlanError, match="keep_ratio"):
        PrunePlan.uniform(groups, 0.0)


def test_plan_json_round_trip_and_fingerprint() -> None:
    plan = PrunePlan(keep={"b": 3, "a": 8}, drop_blocks=["layer2.1", "layer1.0"], round_to=1)
    text = plan.to_json()
    assert list(json.loads(text)["keep"]) == ["a", "b"]
    again = PrunePlan.from_json(text)
    assert again.to_dict() == plan.to_dict()
    assert PrunePlan.from_dict(json.loads(json.dumps(plan.to_dict()))).to_json() == text
    reordered = PrunePlan(keep={"a": 8, "b": 3}, drop_blocks=["layer1.0", "layer2.1"])
    assert reordered.fingerprint() == plan.fingerprint()
    assert len(plan.fingerprint()) == 64
    assert PrunePlan(keep={"a": 8, "b": 4}).fingerprint() != plan.fingerprint()
    assert PrunePlan.unpruned().is_unpruned() and not plan.is_unpruned()
    assert PrunePlan.unpruned().to_dict() == {"keep": {}, "drop_blocks": [], "round_to": 1}


def test_malformed_plan_json_is_refused_with_every_problem() -> None:
    with pytest.raises(InvalidPlanError, match="not valid JSON"):
        PrunePlan.from_json("{keep")
    with pytest.raises(InvalidPlanError) as caught:
        PrunePlan.from_dict({"keep": {"conv1": "8"}, "drop_blocks": "layer1.0",
                             "round_to": 0, "extra": 1})
    message = str(caught.value)
    for fragment in ("extra", "'keep'", "'drop_blocks'", "'round_to'"):
        assert fragment in message


# ---------------------------------------------------------------- applying plans


def test_apply_plan_keeps_exact_counts_and_really_removes_parameters() -> None:
    model, x = _resnet20()
    groups = prunable_groups(model, x)
    plan = PrunePlan(keep={"conv1": 10, "layer1.1.conv1": 3, "layer2.0.conv2": 20,
                           "layer3.2.conv1": 1})
    before = _param_count(model)
    assert apply_plan(model, plan, x) is model
    modules = dict(model.named_modules())
    for group in groups:
        expected = plan.keep.get(group.name, group.channels)
        for conv in group.pruned_convs:
            assert modules[conv].out_channels == expected
            assert modules[conv].weight.shape[0] == expected
    assert modules["layer2.0.conv1"].in_channels == 10
    assert modules["layer1.1.conv2"].weight.shape[1] == 3
    assert modules["layer3.0.conv1"].weight.shape[1] == 20
    assert modules["layer1.0.bn2"].running_mean.shape == (10,)
    assert _param_count(model) < before
    assert not any("mask" in name for name, _ in model.named_buffers())
    assert model(x).shape == (2, 10)


@pytest.mark.parametrize("factory", [_vgg11, _mobilenet, _resnet18])
def test_uniform_plan_prunes_every_architecture(factory) -> None:
    model, x = factory()
    groups = prunable_groups(model, x)
    plan = PrunePlan.uniform(groups, 0.5, round_to=4)
    before = _param_count(model)
    apply_plan(model, plan, x)
    modules = dict(model.named_modules())
    for group in groups:
        count = plan.keep.get(group.name, group.channels)
        assert all(modules[conv].out_channels == count for conv in group.pruned_convs)
        assert count == group.channels or count % 4 == 0
    assert _param_count(model) < 0.4 * before
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 10)


def test_dropped_block_becomes_identity_and_its_groups_are_skipped() -> None:
    model, x = _resnet20()
    plan = PrunePlan(keep={"layer2.1.conv1": 4, "layer2.0.conv2": 16},
                     drop_blocks=["layer2.1", "layer1.0"])
    apply_plan(model, plan, x)
    assert isinstance(model.layer2[1], nn.Identity) and isinstance(model.layer1[0], nn.Identity)
    assert model.layer2[2].conv2.out_channels == 16
    assert model(x).shape == (2, 10)


def test_dropping_a_block_still_prunes_the_stream_it_shared() -> None:
    model, x = _mobilenet()
    # features.4-6 share the projection stream rooted at features.4.conv.2; features.5
    # also holds the root of its own expansion group, which goes with it.
    plan = PrunePlan(keep={"features.4.conv.2": 16, "features.5.conv.0.0": 96},
                     drop_blocks=["features.5"])
    apply_plan(model, plan, x)
    assert model.features[6].conv[2].out_channels == 16
    assert model.features[6].conv[0][0].in_channels == 16
    assert model.eval()(x).shape == (2, 10)


class _BlocksRegisteredFirst(nn.Module):
    """The residual blocks come before the stem in named_modules() order, so the
    stream's root conv (its first output-pruned conv) lives in a removable block."""

    def __init__(self) -> None:
        super().__init__()
        from models.architectures.cifar_resnet import BasicBlock

        self.blocks = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def test_stream_whose_root_conv_was_dropped_is_pruned_from_a_surviving_conv() -> None:
    torch.manual_seed(0)
    model, x = _BlocksRegisteredFirst(), torch.randn(2, 3, 8, 8)
    stream = next(g for g in prunable_groups(model, x) if "stem" in g.pruned_convs)
    assert stream.name == "blocks.0.conv2" and stream.block == "blocks.0"
    apply_plan(model, PrunePlan(keep={stream.name: 4}, drop_blocks=["blocks.0"]), x)
    assert model.stem.out_channels == 4 and model.blocks[1].conv2.out_channels == 4
    assert model(x).shape == (2, 4)


def test_illegal_plan_lists_every_bad_entry_and_changes_nothing() -> None:
    model, x = _resnet20()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = PrunePlan(
        keep={"nope": 3, "conv1": 0, "layer1.1.conv1": 17, "layer2.1.conv1": 12,
              "layer3.0.conv2": 64},
        drop_blocks=["layer2.0", "layer9.9"], round_to=8)
    with pytest.raises(InvalidPlanError) as caught:
        apply_plan(model, plan, x)
    message = str(caught.value)
    assert "6 problems" in message
    for fragment in ("'nope'", "keep['conv1'] = 0", "keep['layer1.1.conv1'] = 17",
                     "keep['layer2.1.conv1'] = 12", "'layer2.0'", "'layer9.9'"):
        assert fragment in message
    assert "layer3.0.conv2" not in message  # all 64 channels: legal despite round_to
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)


def _zero_channels(model: nn.Module, channels: list[int]) -> None:
    block = model.layer1[1]
    with torch.no_grad():
        block.conv1.weight[channels] = 0
        block.bn1.weight[channels] = 0
        block.bn1.bias[channels] = 0
        block.conv2.weight[:, channels] = 0


def test_magnitude_importance_removes_exactly_the_zeroed_filters() -> None:
    model, x = _resnet20()
    zeroed = [1, 4, 5, 11, 14]
    _zero_channels(model, zeroed)
    survivors = [c for c in range(16) if c not in zeroed]
    original = model.layer1[1].conv1.weight.detach().clone()
    model.eval()
    with torch.no_grad():
        expected = model(x)
    apply_plan(model, PrunePlan(keep={"layer1.1.conv1": 11}), x)
    assert torch.equal(model.layer1[1].conv1.weight, original[survivors])
    with torch.no_grad():  # the removed channels carried nothing: same outputs
        assert torch.allclose(model(x), expected, atol=1e-5)


class _ChosenChannels(tp.importance.Importance):
    """Scores that favour a fixed set of channels; records which root it was asked about."""

    def __init__(self, favoured: list[int]) -> None:
        self.favoured = favoured
        self.roots: list[nn.Module] = []

    def __call__(self, group) -> torch.Tensor:
        root = group[0].dep.target.module
        self.roots.append(root)
        scores = torch.zeros(root.out_channels)
        scores[self.favoured] = 1.0
        return scores


def test_custom_importance_is_asked_about_the_named_conv_and_obeyed() -> None:
    model, x = _resnet20()
    stem = model.conv1
    original = stem.weight.detach().clone()
    importance = _ChosenChannels([0, 3, 7, 8, 15, 2, 9, 12])
    apply_plan(model, PrunePlan(keep={"conv1": 8}), x, importance=importance)
    assert importance.roots == [stem]
    assert torch.equal(model.conv1.weight, original[[0, 2, 3, 7, 8, 9, 12, 15]])


def test_round_to_is_honoured_end_to_end() -> None:
    model, x = _resnet18()
    groups = prunable_groups(model, x, round_to=16)
    plan = PrunePlan.uniform(groups, 0.4, round_to=16)
    apply_plan(model, plan, x)
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(width % 16 == 0 for width in widths)
    assert model.layer4[1].conv1.out_channels == 208  # 512 * 0.4 = 204.8 -> 208


def test_apply_plan_keeps_mode_and_running_statistics() -> None:
    model, x = _resnet20()
    model.train()
    running = model.layer3[2].bn1.running_var.clone()
    apply_plan(model, PrunePlan(keep={"layer1.0.conv1": 8}), x)
    assert model.training
    assert torch.equal(model.layer3[2].bn1.running_var, running)
