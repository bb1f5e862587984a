"""Training loops: train from scratch, fine-tune, distill from a teacher, evaluate.

One loop serves the baseline, every trial's short fine-tune and the final long
fine-tune: SGD with Nesterov momentum or AdamW (no weight decay on norm layers
and biases), a linear warm-up then a cosine learning rate over all steps, the
learning rate scaled with the batch size, the training augmentation of the
dataset's preprocessing, optional label smoothing, mixed precision (bfloat16 or
float16) and channels_last on CUDA, and knowledge distillation from the unpruned
model. A run lasts a number of epochs, or a number of optimiser steps. It is
deterministic under a seed on CPU, whatever the number of loader workers.

Callers steer it in two ways. A per-epoch callback sees the epoch's metrics and
may raise (``optuna.TrialPruned``, a cancellation error, ...): the exception
leaves ``train`` untouched. A ``threading.Event`` is checked between batches, so
a cancel request ends training within one optimisation step.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from core.errors import InvalidSpecError, TrainingCancelled, TrainingDivergedError
from models.architectures import build_model
from models.datasets import DataSplits
from models.distillation import distillation_loss
from models.evaluation import evaluate
from models.optimizer import autocast, autocast_dtype, make_optimizer, make_schedule

__all__ = [
    "EpochCallback",
    "TrainConfig",
    "distillation_loss",
    "evaluate",
    "fine_tune",
    "train_model",
    "train_baseline",
]

#: Called after every epoch with (epoch number from 1, metrics of that epoch).
EpochCallback = Callable[[int, dict[str, float]], None]

#: Learning rate of a fine-tune: lower than training from scratch.
FINE_TUNE_LEARNING_RATE = 0.005


@dataclass
class TrainConfig:
    """How one training run goes.

    Attributes:
        epochs: passes over the training split.
        steps: when set, the run is this many optimiser steps instead of ``epochs``
            passes (the last pass stops part way).
        learning_rate: peak learning rate; it decays to zero over all steps (cosine).
        reference_batch_size: when set, ``learning_rate`` is quoted for this batch
            size and scaled linearly to ``batch_size``.
        warmup_epochs: linear warm-up from near zero to the peak, in epochs (at most
            half the run's steps).
        optimizer: ``sgd`` (Nesterov momentum) or ``adamw``.
        momentum: SGD momentum (Nesterov).
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        decay_norm_and_bias: decay norm-layer weights and biases too.
        batch_size: training batch size.
        label_smoothing: cross-entropy label smoothing in [0, 1).
        amp: mixed precision (bfloat16 autocast where the GPU supports it, else
            float16 with gradient scaling); None turns it on exactly when the
            device is CUDA. It needs a CUDA device.
        channels_last: channels_last memory format; None: on exactly on CUDA.
        distill_alpha: with a teacher, the weight of the distillation term;
            ``1 - distill_alpha`` weighs the cross-entropy with the labels.
        distill_temperature: softmax temperature of distillation.
        seed: seeds initialisation (baseline), shuffling and any randomness of
            the model; the same seed on CPU gives the same weights.
        device: where to train (``cpu``, ``cuda``, ``cuda:1``, ...).
    """

    epochs: int
    steps: int | None = None
    learning_rate: float = 0.01
    reference_batch_size: int | None = None
    warmup_epochs: float = 0.0
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = False
    batch_size: int = 64
    label_smoothing: float = 0.0
    amp: bool | None = None
    channels_last: bool | None = None
    distill_alpha: float = 0.5
    distill_temperature: float = 4.0
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 0:
            problems.append(f"epochs must be >= 0, got {self.epochs}")
        if self.steps is not None and self.steps < 0:
            problems.append(f"steps must be >= 0, got {self.steps}")
        if self.optimizer not in ("sgd", "adamw"):
            problems.append(f"optimizer must be sgd or adamw, got {self.optimizer!r}")
        if self.weight_decay < 0 or self.warmup_epochs < 0:
            problems.append("weight_decay and warmup_epochs must be >= 0")
        if self.reference_batch_size is not None and self.reference_batch_size < 1:
            problems.append(f"reference_batch_size must be >= 1, got "
                            f"{self.reference_batch_size}")
        if not self.learning_rate > 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.distill_alpha <= 1:
            problems.append(f"distill_alpha must be in [0, 1], got {self.distill_alpha}")
        if not self.distill_temperature > 0:
            problems.append(f"distill_temperature must be > 0, got {self.distill_temperature}")
        if problems:
            raise InvalidSpecError("invalid training settings: " + "; ".join(problems))

    def uses_amp(self) -> bool:
        """Whether mixed precision is on for this config's device.

        Raises:
            InvalidSpecError: ``amp=True`` on a device that is not CUDA.
        """
        is_cuda = torch.device(self.device).type == "cuda"
        if self.amp and not is_cuda:
            raise InvalidSpecError(f"amp=True needs a CUDA device, not {self.device!r}; "
                                   "leave amp unset to choose by device")
        return is_cuda if self.amp is None else self.amp

    def peak_learning_rate(self) -> float:
        """``learning_rate``, scaled linearly to the batch size when it is quoted for
        ``reference_batch_size``."""
        if self.reference_batch_size is None:
            return self.learning_rate
        return self.learning_rate * self.batch_size / self.reference_batch_size

    def uses_channels_last(self) -> bool:
        if self.channels_last is None:
            return torch.device(self.device).type == "cuda"
        return self.channels_last


def _check_cancel(cancel_event: threading.Event | None) -> None:
    if cancel_event is not None and cancel_event.is_set():
        raise TrainingCancelled("training cancelled on request")


def _train_one_epoch(model: nn.Module, loader: Iterable[Any], optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler,
                     scaler: torch.amp.GradScaler, config: TrainConfig, use_amp: bool,
                     teacher: nn.Module | None, cancel_event: threading.Event | None,
                     max_steps: int | None = None) -> tuple[float, float, int]:
    """One pass over ``loader`` (or its first ``max_steps`` steps); returns (mean loss
    per sample, last learning rate, optimiser steps taken)."""
    device = torch.device(config.device)
    memory_format = (torch.channels_last if config.uses_channels_last()
                     else torch.contiguous_format)
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    samples = steps = 0
    learning_rate = float(scheduler.get_last_lr()[0])
    for inputs, labels in loader:
        _check_cancel(cancel_event)
        if max_steps is not None and steps >= max_steps:
            break
        if inputs.shape[0] < 2:
            # BatchNorm cannot train on a single sample; the remainder of an epoch is dropped.
            continue
        inputs = inputs.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, use_amp):
            logits = model(inputs)
            if teacher is None:
                loss = functional.cross_entropy(logits.float(), labels,
                                                label_smoothing=config.label_smoothing)
            else:
                with torch.no_grad():
                    teacher_logits = teacher(inputs)
                loss = distillation_loss(logits, teacher_logits, labels, config.distill_alpha,
                                         config.distill_temperature, config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        learning_rate = float(scheduler.get_last_lr()[0])
        scheduler.step()
        loss_sum += loss.detach().double() * inputs.shape[0]
        samples += inputs.shape[0]
        steps += 1
    if samples == 0:
        raise InvalidSpecError("the training split has fewer than 2 samples; nothing to train on")
    mean_loss = loss_sum.item() / samples
    if not math.isfinite(mean_loss):
        raise TrainingDivergedError(f"training loss became {mean_loss}; lower the learning rate "
                                    f"(now {config.learning_rate})")
    return mean_loss, learning_rate, steps


def _rng_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def train_model(model: nn.Module, splits: DataSplits, config: TrainConfig,
          callback: EpochCallback | None = None, teacher: nn.Module | None = None,
          eval_split: str | None = "val",
          cancel_event: threading.Event | None = None) -> dict[str, list[float]]:
    """Train ``model`` in place on ``splits.train``.

    The global random state is left as it was: seeding happens inside a forked
    generator. The model ends on ``config.device`` in eval mode.

    Args:
        model: the network; moved to ``config.device``.
        splits: the dataset (``models.datasets.DataSplits``).
        config: how to train.
        callback: called after every epoch (and after the last, partial one of a
            run of ``steps``) with (epoch from 1, metrics); metrics hold
            ``train_loss``, ``lr`` (the last step's learning rate), ``step`` (steps
            so far), ``seconds`` and, with an ``eval_split``, ``val_accuracy``.
            Whatever it raises propagates out of ``train``.
        teacher: when given, distil from it (it is put in eval mode on the same
            device and never updated; its training flag is restored afterwards).
        eval_split: split scored after every epoch (reported as
            ``val_accuracy``); None skips evaluation.
        cancel_event: checked before every batch.

    Returns:
        History: one list per metric (``epoch``, ``train_loss``, ``lr``, ``step``,
        ``seconds`` and ``val_accuracy`` when evaluated), one entry per epoch.

    Raises:
        TrainingCancelled: ``cancel_event`` was set.
        TrainingDivergedError: the loss became NaN or infinite.
        InvalidSpecError: settings that cannot work (amp without CUDA, ...).
    """
    device = torch.device(config.device)
    use_amp = config.uses_amp()
    model.to(device)
    teacher_was_training = teacher.training if teacher is not None else False
    if teacher is not None:
        teacher.to(device).eval()
    history: dict[str, list[float]] = {"epoch": [], "train_loss": [], "lr": [], "step": [],
                                       "seconds": []}
    if eval_split is not None:
        history["val_accuracy"] = []
    if config.uses_channels_last():
        model.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config.optimizer, config.peak_learning_rate(),
                               config.momentum, config.weight_decay, config.decay_norm_and_bias)
    # One loader for the whole run: its worker processes persist from epoch to epoch.
    loader = splits.loader("train", config.batch_size, shuffle=True, augment=True,
                           persistent=True)
    steps_per_epoch = len(loader)
    total_steps = config.steps if config.steps is not None else config.epochs * steps_per_epoch
    warmup_steps = min(round(config.warmup_epochs * steps_per_epoch), total_steps // 2)
    scheduler = make_schedule(optimizer, total_steps, warmup_steps)
    # bfloat16 keeps float32's range: only float16 needs its gradients scaled.
    scaler = torch.amp.GradScaler(device.type,
                                  enabled=use_amp and autocast_dtype(device) == torch.float16)
    steps_left = config.steps
    step = 0
    try:
        with torch.random.fork_rng(devices=_rng_devices(device)):
            torch.manual_seed(config.seed)
            epoch = 0
            while (epoch < config.epochs if steps_left is None else steps_left > 0):
                epoch += 1
                started = time.perf_counter()
                loader.reseed(config.seed * 100_003 + epoch)
                loss, learning_rate, taken = _train_one_epoch(
                    model, loader, optimizer, scheduler, scaler, config, use_amp, teacher,
                    cancel_event, max_steps=steps_left)
                step += taken
                if steps_left is not None:
                    steps_left -= taken
                metrics = {"train_loss": loss, "lr": learning_rate, "step": float(step)}
                if eval_split is not None:
                    metrics["val_accuracy"] = evaluate(model, splits, eval_split, device,
                                                       use_amp=use_amp)
                metrics["seconds"] = time.perf_counter() - started
                history["epoch"].append(epoch)
                for key, value in metrics.items():
                    history[key].append(value)
                if callback is not None:
                    callback(epoch, dict(metrics))
    finally:
        model.eval()
        if config.uses_channels_last():
            model.to(memory_format=torch.contiguous_format)
        if teacher is not None:
            teacher.train(teacher_was_training)
            if config.uses_channels_last():
                teacher.to(memory_format=torch.contiguous_format)
    return history


def fine_tune(model: nn.Module, splits: DataSplits, epochs: int,
              teacher: nn.Module | None = None, callback: EpochCallback | None = None, *,
              eval_split: str | None = "val", cancel_event: threading.Event | None = None,
              **overrides: Any) -> dict[str, list[float]]:
    """Fine-tune a (pruned) model: ``train`` with a lower default learning rate.

    Args:
        model: the network, trained in place.
        splits: the dataset.
        epochs: passes over the training split (``steps=N`` in ``overrides`` runs N
            optimiser steps instead).
        teacher: distil from it when given (usually the unpruned model).
        callback: per-epoch callback, as in ``train``.
        eval_split: split scored after every epoch, as in ``train``.
        cancel_event: checked before every batch.
        **overrides: any other ``TrainConfig`` field (learning_rate defaults to 0.005).

    Returns:
        The history, as in ``train``.

    Raises:
        InvalidSpecError: an override that is not a ``TrainConfig`` field.
    """
    known = {field.name for field in fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InvalidSpecError(f"unknown training settings {unknown}; known: {sorted(known)}")
    settings = {"learning_rate": FINE_TUNE_LEARNING_RATE, **overrides}
    config = TrainConfig(epochs=epochs, **settings)
    return train_model(model, splits, config, callback=callback, teacher=teacher,
                 eval_split=eval_split, cancel_event=cancel_event)


def train_baseline(arch: str, arch_arguments: dict[str, Any], splits: DataSplits,
                   config: TrainConfig, callback: EpochCallback | None = None,
                   cancel_event: threading.Event | None = None,
                   eval_split: str | None = "val") -> nn.Module:
    """Build a network from the registry and train it from scratch.

    Used when a job gives no starting weights. Initialisation is seeded with
    ``config.seed``, so the same config gives the same network on CPU.

    Args:
        arch: registry name (``cifar_resnet20``, ...).
        arch_arguments: builder arguments; ``num_classes`` comes from ``splits``.
        splits: the dataset.
        config: how to train.
        callback: per-epoch callback, as in ``train``.
        cancel_event: checked before every batch.
        eval_split: split scored after every epoch, as in ``train``.

    Returns:
        The trained network, in eval mode on ``config.device``; its history is
        attached as ``training_history``.

    Raises:
        InvalidSpecError: ``arch_arguments`` sets a ``num_classes`` that
            disagrees with the dataset, or an argument the builder lacks.
    """
    given = arch_arguments.get("num_classes")
    if given is not None and given != splits.num_classes:
        raise InvalidSpecError(f"num_classes={given} but the dataset has {splits.num_classes} "
                               "classes; drop num_classes or make them agree")
    arguments = {**arch_arguments, "num_classes": splits.num_classes}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(arch, **arguments)
    history = train_model(model, splits, config, callback=callback,
                    eval_split=eval_split, cancel_event=cancel_event)
    model.training_history = history  # type: ignore[assignment]
    return model
