from __future__ import annotations

import copy
import dataclasses
import math
import threading

import pytest
import torch
from torch.nn import functional
from torch.utils.data import DataLoader, Subset

from core.errors import InvalidSpecError, TrainingCancelled
from models.architectures import build_model
from models.datasets import DataSplits, load_dataset
from models.optimizer import autocast_dtype, make_optimizer, make_schedule, parameter_groups
from models.train import (
    FINE_TUNE_LEARNING_RATE,
    TrainConfig,
    distillation_loss,
    evaluate,
    fine_tune,
    train_baseline,
    train_model,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_dataset("digits", image_size=16, seed=0)


@pytest.fixture(scope="module")
def small_digits(digits: DataSplits) -> DataSplits:
    """256 training images: enough to exercise the loop, quick on two shared cores."""
    return dataclasses.replace(digits, train=Subset(digits.train, range(256)))


def _fresh_resnet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("cifar_resnet20", num_classes=10)


def _assert_same_weights(first: torch.nn.Module, second: torch.nn.Module) -> None:
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resnet20_learns_digits_well_above_chance(digits: DataSplits) -> None:
    seen: list[float] = []
    model = train_baseline("cifar_resnet20", {}, digits,
                           TrainConfig(epochs=3, learning_rate=0.05),
                           callback=lambda epoch, metrics: seen.append(metrics["val_accuracy"]))
    accuracy = evaluate(model, digits, "val")
    assert accuracy > 0.6
    assert seen[-1] == accuracy
    assert not model.training
    assert model.training_history["val_accuracy"] == seen


def test_same_seed_gives_identical_weights_and_another_seed_does_not(
        small_digits: DataSplits) -> None:
    config = TrainConfig(epochs=2, seed=3)
    first = train_baseline("cifar_resnet20", {}, small_digits, config, eval_split=None)
    second = train_baseline("cifar_resnet20", {}, small_digits, config, eval_split=None)
    _assert_same_weights(first, second)
    assert first.training_history["train_loss"] == second.training_history["train_loss"]

    other = train_baseline("cifar_resnet20", {}, small_digits,
                           dataclasses.replace(config, seed=4), eval_split=None)
    assert not torch.equal(first.conv1.weight, other.conv1.weight)


def test_train_leaves_the_global_random_state_alone(small_digits: DataSplits) -> None:
    model = _fresh_resnet()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_model(model, small_digits, TrainConfig(epochs=1), eval_split=None)
    assert torch.equal(torch.rand(3), expected)


def test_callback_sees_every_epoch_with_its_metrics(small_digits: DataSplits) -> None:
    calls: list[tuple[int, dict[str, float]]] = []
    history = train_model(_fresh_resnet(), small_digits, TrainConfig(epochs=3),
                    callback=lambda epoch, metrics: calls.append((epoch, metrics)))
    assert [epoch for epoch, _ in calls] == [1, 2, 3]
    for epoch, metrics in calls:
        assert set(metrics) == {"train_loss", "val_accuracy", "lr", "step", "seconds"}
        assert 0 <= metrics["val_accuracy"] <= 1 and metrics["seconds"] > 0
        assert history["train_loss"][epoch - 1] == metrics["train_loss"]
    assert history["epoch"] == [1, 2, 3]


def test_an_exception_from_the_callback_stops_training(small_digits: DataSplits) -> None:
    class StopHere(Exception):
        pass

    epochs_seen: list[int] = []

    def stop_at_second(epoch: int, metrics: dict[str, float]) -> None:
        epochs_seen.append(epoch)
        if epoch == 2:
            raise StopHere

    model = _fresh_resnet()
    with pytest.raises(StopHere):
        train_model(model, small_digits, TrainConfig(epochs=5), callback=stop_at_second,
              eval_split=None)
    assert epochs_seen == [1, 2]
    assert not model.training


def test_cancel_event_ends_training_within_one_step(small_digits: DataSplits) -> None:
    cancel = threading.Event()
    model = _fresh_resnet()
    training_forwards = []

    def cancel_during_first_step(module: torch.nn.Module, inputs: tuple) -> None:
        if module.training:
            training_forwards.append(inputs[0].shape[0])
            cancel.set()

    model.register_forward_pre_hook(cancel_during_first_step)
    with pytest.raises(TrainingCancelled):
        train_model(model, small_digits, TrainConfig(epochs=3, batch_size=16), cancel_event=cancel)
    assert len(training_forwards) == 1


def test_a_cancel_set_before_the_start_runs_no_step(small_digits: DataSplits) -> None:
    cancel = threading.Event()
    cancel.set()
    model = _fresh_resnet()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(TrainingCancelled):
        fine_tune(model, small_digits, 1, cancel_event=cancel)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_distillation_runs_is_deterministic_and_leaves_the_teacher_alone(
        small_digits: DataSplits) -> None:
    teacher = _fresh_resnet(seed=1)
    train_model(teacher, small_digits, TrainConfig(epochs=1), eval_split=None)
    teacher.train()
    teacher_before = copy.deepcopy(teacher.state_dict())
    student = _fresh_resnet(seed=2)
    start = copy.deepcopy(student.state_dict())

    distilled = fine_tune(student, small_digits, 2, teacher=teacher, eval_split=None)
    again = _fresh_resnet(seed=2)
    again.load_state_dict(start)
    distilled_again = fine_tune(again, small_digits, 2, teacher=teacher, eval_split=None)
    _assert_same_weights(student, again)
    assert distilled["train_loss"] == distilled_again["train_loss"]

    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    assert teacher.training

    plain = _fresh_resnet(seed=2)
    plain.load_state_dict(start)
    undistilled = fine_tune(plain, small_digits, 2, eval_split=None)
    assert undistilled["train_loss"] != distilled["train_loss"]


def test_distillation_loss_mixes_kl_and_cross_entropy() -> None:
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(8, 10, generator=generator)
    teacher = torch.randn(8, 10, generator=generator)
    labels = torch.randint(0, 10, (8,), generator=generator)
    temperature = 4.0

    cross_entropy = functional.cross_entropy(student, labels)
    assert torch.allclose(distillation_loss(student, teacher, labels, 0.0, temperature),
                          cross_entropy)
    assert distillation_loss(teacher, teacher, labels, 1.0, temperature).abs() < 1e-6
    soft_teacher = torch.softmax(teacher / temperature, dim=1)
    log_student = torch.log_softmax(student / temperature, dim=1)
    kl = (soft_teacher * (soft_teacher.log() - log_student)).sum(dim=1).mean()
    expected = 0.3 * kl * temperature**2 + 0.7 * cross_entropy
    assert torch.allclose(distillation_loss(student, teacher, labels, 0.3, temperature),
                          expected, atol=1e-6)


def test_evaluate_matches_a_manual_count(digits: DataSplits) -> None:
    model = _fresh_resnet(seed=5)
    train_model(model, dataclasses.replace(digits, train=Subset(digits.train, range(128))),
          TrainConfig(epochs=1), eval_split=None)
    correct = 0
    with torch.no_grad():
        for index in range(len(digits.test)):
            image, label = digits.test[index]
            correct += int(model(image.unsqueeze(0)).argmax().item() == int(label))
    model.train()
    expected = correct / len(digits.test)
    assert evaluate(model, digits, "test", batch_size=7) == expected
    assert evaluate(model, DataLoader(digits.test, batch_size=50)) == expected
    assert model.training


def test_label_smoothing_keeps_the_loss_above_the_smoothed_entropy(digits: DataSplits) -> None:
    smoothing, classes = 0.3, 10
    on_target = 1 - smoothing + smoothing / classes
    off_target = smoothing / classes
    entropy_floor = -(on_target * math.log(on_target)
                      + (classes - 1) * off_target * math.log(off_target))

    config = TrainConfig(epochs=2, learning_rate=0.05, seed=1)
    smoothed = train_model(_fresh_resnet(), digits, dataclasses.replace(
        config, label_smoothing=smoothing), eval_split=None)
    plain = train_model(_fresh_resnet(), digits, config, eval_split=None)
    assert all(loss >= entropy_floor for loss in smoothed["train_loss"])
    assert plain["train_loss"][-1] < entropy_floor


def test_learning_rate_follows_a_cosine_over_all_steps(small_digits: DataSplits) -> None:
    config = TrainConfig(epochs=3, learning_rate=0.02, batch_size=32)
    history = train_model(_fresh_resnet(), small_digits, config, eval_split=None)
    steps_per_epoch = math.ceil(len(small_digits.train) / config.batch_size)
    total = config.epochs * steps_per_epoch
    for epoch, learning_rate in zip(history["epoch"], history["lr"], strict=True):
        last_step = epoch * steps_per_epoch - 1
        expected = config.learning_rate * 0.5 * (1 + math.cos(math.pi * last_step / total))
        assert learning_rate == pytest.approx(expected, rel=1e-6)
    assert history["lr"] == sorted(history["lr"], reverse=True)


def test_settings_that_cannot_work_are_refused(digits: DataSplits) -> None:
    with pytest.raises(InvalidSpecError, match="CUDA"):
        TrainConfig(epochs=1, amp=True).uses_amp()
    assert TrainConfig(epochs=1).uses_amp() is False
    with pytest.raises(InvalidSpecError, match="label_smoothing"):
        TrainConfig(epochs=1, label_smoothing=1.5)
    with pytest.raises(InvalidSpecError, match="learning_rte"):
        fine_tune(_fresh_resnet(), digits, 1, learning_rte=0.1)
    with pytest.raises(InvalidSpecError, match="num_classes"):
        train_baseline("cifar_resnet20", {"num_classes": 7}, digits, TrainConfig(epochs=1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp", [None, False])
def test_cuda_fine_tune_uses_mixed_precision_unless_turned_off(small_digits: DataSplits,
                                                               amp: bool | None) -> None:
    model = _fresh_resnet()
    seen: list[torch.dtype] = []
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda _m, _i, output: seen.append(output.dtype))
    history = fine_tune(model, small_digits, 2, device="cuda", amp=amp)
    # bfloat16 where the GPU has it (no gradient scaler), float16 elsewhere.
    expected = torch.float32 if amp is False else autocast_dtype(torch.device("cuda"))
    assert seen and set(seen) == {expected}
    assert all(math.isfinite(loss) for loss in history["train_loss"])
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert next(model.parameters()).device.type == "cuda"
    assert next(model.parameters()).dtype == torch.float32  # master weights stay float32


def _count_training_passes(model: torch.nn.Module) -> list[int]:
    passes: list[int] = []
    model.register_forward_hook(
        lambda module, _inputs, _output: passes.append(1) if module.training else None)
    return passes


def test_a_run_of_steps_stops_at_its_count_mid_epoch(small_digits: DataSplits) -> None:
    tiny = dataclasses.replace(small_digits, train=Subset(small_digits.train, range(40)))
    model = _fresh_resnet()
    passes = _count_training_passes(model)
    calls: list[int] = []
    # 40 images at batch 16: 3 steps a pass, so 7 steps end one step into the third pass.
    history = fine_tune(model, tiny, 0, steps=7, batch_size=16,
                        callback=lambda epoch, metrics: calls.append(epoch))
    assert len(passes) == 7
    assert history["step"] == [3.0, 6.0, 7.0] and calls == [1, 2, 3]
    assert len(history["val_accuracy"]) == 3  # the last, partial pass is scored too
    # The cosine spans the 7 steps: the last one runs at its step-6 value.
    assert history["lr"][-1] == pytest.approx(
        FINE_TUNE_LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * 6 / 7)))
    assert fine_tune(_fresh_resnet(), tiny, 0) == {"epoch": [], "train_loss": [], "lr": [],
                                                    "step": [], "seconds": [],
                                                    "val_accuracy": []}


def test_warm_up_rises_to_the_peak_then_the_cosine_falls() -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    schedule = make_schedule(optimizer, total_steps=20, warmup_steps=4)
    rates = []
    for _ in range(20):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[:5] == sorted(rates[:5]) and rates[0] < 0.03
    assert rates[4] == pytest.approx(0.1)
    assert rates[4:] == sorted(rates[4:], reverse=True) and rates[-1] < 0.002


def test_no_weight_decay_on_norm_layers_and_biases() -> None:
    model = _fresh_resnet()
    decayed, kept = parameter_groups(model, 5e-4, decay_norm_and_bias=False)
    norm_and_bias = {id(p) for m in model.modules()
                     if isinstance(m, torch.nn.BatchNorm2d | torch.nn.Linear)
                     for name, p in m.named_parameters(recurse=False)
                     if isinstance(m, torch.nn.BatchNorm2d) or name == "bias"}
    assert {id(p) for p in kept["params"]} == norm_and_bias and kept["weight_decay"] == 0.0
    assert all(p.ndim == 4 or p.ndim == 2 for p in decayed["params"])
    assert len(parameter_groups(model, 5e-4, decay_norm_and_bias=True)) == 1


def test_adamw_channels_last_and_a_learning_rate_scaled_with_the_batch(
        small_digits: DataSplits) -> None:
    config = TrainConfig(epochs=1, learning_rate=0.001, optimizer="adamw", batch_size=128,
                         reference_batch_size=64, warmup_epochs=0.5, channels_last=True)
    assert config.peak_learning_rate() == pytest.approx(0.002)
    assert isinstance(make_optimizer(_fresh_resnet(), "adamw", 0.002, 0.9, 0.01, False),
                      torch.optim.AdamW)
    model = _fresh_resnet()
    history = train_model(model, small_digits, config, eval_split=None)
    assert math.isfinite(history["train_loss"][0]) and history["lr"][0] <= 0.002
    assert next(model.parameters()).is_contiguous()  # back to the default memory format
    with pytest.raises(InvalidSpecError, match="optimizer"):
        TrainConfig(epochs=1, optimizer="rmsprop")
