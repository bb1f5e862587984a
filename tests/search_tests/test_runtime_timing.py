"""Trials timed in the spec's runtime, side by side with the unpruned network exported once;
widths on the channel multiple of the runtime and device."""

from __future__ import annotations

import copy

import onnx
import optuna
import pytest
import torch
from optuna.trial import TrialState

import models.runtimes
from core.spec import CPU_ROUND_TO, CUDA_ROUND_TO, INT8_ROUND_TO, JobSpec
from core.trial import TrialRecord
from models import build_model
from models.export import export_onnx
from models.plan import PrunePlan, apply_plan, prunable_groups, removable_blocks
from search.costs import LatencyTimer
from search.objective import Objective, measure_baseline
from search.space import SearchSpace
from search.storage import open_storage
from search.study import open_study, run_trials
from tests.search_tests.conftest import make_context, make_spec

ONNXRUNTIME = {"runtime": "onnxruntime", "threads": 1}


def test_the_reference_is_exported_once_per_timer(monkeypatch, baseline) -> None:
    exported: list[int] = []
    original = models.runtimes._export_for_timing

    def counting(model, path, input_shape):
        exported.append(sum(p.numel() for p in model.parameters()))
        original(model, path, input_shape)

    monkeypatch.setattr(models.runtimes, "_export_for_timing", counting)
    model = baseline.model
    x = baseline.splits.example_input()
    halved = apply_plan(copy.deepcopy(model), PrunePlan.uniform(prunable_groups(model, x), 0.5,
                                                                round_to=4), x)
    timer = LatencyTimer(model, baseline.splits.input_shape, "cpu", 2.0, runs=5, warmup=1,
                         runtime="onnxruntime", threads=1)
    first, second = timer.time(halved), timer.time(halved)
    unpruned = sum(p.numel() for p in model.parameters())
    assert exported.count(unpruned) == 1 and len(exported) == 3
    for timing in (first, second):
        assert timing["latency_runtime"] == "onnxruntime"
        assert 0 < timing["latency_ratio"] < 1.5
        assert timing["latency_ms"] == pytest.approx(2.0 * timing["latency_ratio"])


def test_an_onnxruntime_job_records_runtime_timed_latency(tmp_path, baseline) -> None:
    spec = make_spec(latency=ONNXRUNTIME, search={"n_trials": 2},
                     fine_tune={"trial_epochs": 0})
    metrics = measure_baseline(baseline.model, baseline.splits, spec)
    assert metrics["latency_runtime"] == "onnxruntime"
    context = make_context(baseline, metrics, spec)
    study = open_study(open_storage(f"sqlite:///{tmp_path}/optuna.db"), "ort", spec)
    run_trials(study, Objective(context), spec)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2
    for trial in trials:
        record = TrialRecord.from_trial(trial)
        # Only a FLOPs limit, yet every latency is timed in ONNX Runtime, side by side.
        assert record.latency_runtime == "onnxruntime"
        assert record.latency_ratio is not None and record.latency_raw_ms is not None
        assert record.latency_ms == pytest.approx(record.latency_ratio * metrics["latency_ms"])


def test_an_eager_job_records_torch(tmp_path, baseline, baseline_metrics) -> None:
    spec = make_spec(search={"n_trials": 1}, fine_tune={"trial_epochs": 0},
                     objective={"constraints": {"max_latency_ratio": 0.99}})
    context = make_context(baseline, baseline_metrics, spec)
    study = open_study(open_storage(f"sqlite:///{tmp_path}/optuna.db"), "eager", spec)
    run_trials(study, Objective(context), spec)
    [trial] = study.get_trials(states=(TrialState.COMPLETE,))
    assert TrialRecord.from_trial(trial).latency_runtime == "torch"


def _spec(**latency: object) -> JobSpec:
    return make_spec(latency=latency)


def test_round_to_defaults_by_runtime_and_device() -> None:
    assert _spec().channel_multiple("cpu") == CPU_ROUND_TO
    assert _spec().channel_multiple("cuda") == CUDA_ROUND_TO == 8
    assert _spec(runtime="onnxruntime", device="cuda").channel_multiple("cuda") == 8
    assert _spec(runtime="openvino").channel_multiple("cpu") == CPU_ROUND_TO
    assert _spec(runtime="tensorrt").channel_multiple("cuda") == 8
    assert _spec(runtime="tensorrt", precision="int8").channel_multiple("cuda") == \
        INT8_ROUND_TO == 32
    assert make_spec(search={"round_to": 2}).channel_multiple("cuda") == 2


@pytest.mark.parametrize("spec_error", [
    {"runtime": "openvino", "device": "cuda"}, {"runtime": "tensorrt", "device": "cpu"},
    {"runtime": "onnxruntime", "precision": "fp16"}, {"runtime": "tvm"}])
def test_runtimes_that_cannot_time_on_the_device_are_refused(spec_error) -> None:
    with pytest.raises(ValueError):
        _spec(**spec_error)


@pytest.mark.parametrize(("arch", "size", "multiple"), [
    ("cifar_resnet20", 16, 8), ("mobilenet_v2", 32, 8), ("mobilenet_v2", 32, 32),
    ("cifar_resnet20", 16, 32)])
def test_every_exported_width_is_a_multiple_of_round_to(tmp_path, arch, size, multiple) -> None:
    model = build_model(arch, num_classes=10).eval()
    x = torch.zeros(1, 3, size, size)
    groups = prunable_groups(model, x, round_to=multiple)
    space = SearchSpace.from_spec(groups, removable_blocks(model, x),
                                  make_spec(search={"min_keep_ratio": 0.1}).search,
                                  round_to=multiple)
    full = {conv.out_channels for conv in model.modules() if isinstance(conv, torch.nn.Conv2d)}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for index in range(3):
        keep, dropped = space.suggest(study.ask())
        plan = PrunePlan(keep=keep, drop_blocks=dropped, round_to=space.plan_round_to())
        assert plan.round_to == multiple
        pruned = apply_plan(copy.deepcopy(model), plan, x)
        widths = [conv.out_channels for conv in pruned.modules()
                  if isinstance(conv, torch.nn.Conv2d)]
        if index == 0 and multiple == 32:  # and in the file a user downloads
            path = tmp_path / f"{arch}.onnx"
            export_onnx(pruned, path, (3, size, size))
            graph = onnx.load(str(path)).graph
            weights = {tensor.name: tensor.dims for tensor in graph.initializer}
            exported = [weights[node.input[1]][0] for node in graph.node
                        if node.op_type == "Conv" and node.input[1] in weights]
            assert sorted(exported) == sorted(widths)
        # A width that is no multiple is a group kept whole.
        unaligned = [width for width in widths if width % multiple and width not in full]
        assert not unaligned, (keep, unaligned)
        assert any(width % multiple == 0 and width not in full for width in widths) or \
            all(count in full for count in keep.values())
