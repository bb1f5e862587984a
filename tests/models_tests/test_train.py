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
from models.train import (
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
        assert set(metrics) == {"train_loss", "val_accuracy", "lr", "seconds"}
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
def test_cuda_fine_tune_uses_float16_autocast_unless_turned_off(small_digits: DataSplits,
                                                                amp: bool | None) -> None:
    model = _fresh_resnet()
    seen: list[torch.dtype] = []
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda _m, _i, output: seen.append(output.dtype))
    history = fine_tune(model, small_digits, 2, device="cuda", amp=amp)
    expected = torch.float32 if amp is False else torch.float16
    assert seen and set(seen) == {expected}
    assert all(math.isfinite(loss) for loss in history["train_loss"])
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert next(model.parameters()).device.type == "cuda"
    assert next(model.parameters()).dtype == torch.float32  # master weights stay float32
