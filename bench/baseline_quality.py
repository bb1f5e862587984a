"""Baseline quality: ResNet-20 trained by Topiary on all of Fashion-MNIST, scored on its test split.

    python bench/baseline_quality.py [--epochs 60] [--device cpu|cuda] [--root DIR]
                                     [--eval-every N] [--save baseline.safetensors]

Trains cifar_resnet20 from scratch at 28x28 on all 60,000 training images with the
recipe a job's baseline gets (``models.train``: SGD with Nesterov momentum, no weight
decay on norm layers and biases, a linear warm-up then a cosine, the preset
augmentation: pad-and-crop + horizontal flip) and reports top-1 accuracy on the
official 10,000-image test split against the goal of 93.5% (published: ResNet-18
94.9%, MobileNet 95.0%). The test split is scored at the end only (``--eval-every``
prints it along the way, for watching, never for choosing).

Long on a CPU (one to two minutes an epoch on two cores): start it in the
background, e.g.

    nohup .venv/bin/python bench/baseline_quality.py > baseline_quality.log 2>&1 &

Seconds an epoch on a GPU (``--device cuda``). Never part of the test suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import torch

from models.architectures import build_model
from models.checkpoints import save_weights
from models.data import TensorImages
from models.datasets import DataSplits, load_dataset
from models.train import TrainConfig, evaluate, train_model

GOAL = 0.935


def all_training_images(splits: DataSplits) -> DataSplits:
    """train, val and calibration together: the 60,000 images of the training files."""
    parts = [part for part in (splits.train, splits.val, splits.calibration)
             if isinstance(part, TensorImages)]
    assert len(parts) == 3 and splits.preprocessing is not None
    train = TensorImages(torch.cat([part.images for part in parts]),
                         torch.cat([part.labels for part in parts]), splits.preprocessing)
    return dataclasses.replace(splits, train=train)


def _count(dataset: Any) -> int:
    return len(dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist",
                        help="folder of the four IDX files")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=0.1,
                        help="peak, at --batch-size (not rescaled)")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--warmup-epochs", type=float, default=2.0)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--width", type=int, default=16, help="ResNet-20's first width")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on CPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=0,
                        help="also print test accuracy every N epochs (0: at the end only)")
    parser.add_argument("--subset", type=int, default=None,
                        help="train on the first N images only (a smoke run, not the benchmark)")
    parser.add_argument("--test-images", type=int, default=None,
                        help="score the first N test images only (a smoke run)")
    parser.add_argument("--save", default=None,
                        help="write the trained weights here (safetensors; usable as a "
                             "job's uploaded weights)")
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    splits = all_training_images(load_dataset("fashion_mnist", root=options.root,
                                              seed=options.seed))
    splits = splits.limit("train", options.subset).limit("test", options.test_images)
    splits = splits.to_device(options.device)
    config = TrainConfig(epochs=options.epochs, batch_size=options.batch_size,
                         learning_rate=options.learning_rate, weight_decay=options.weight_decay,
                         warmup_epochs=options.warmup_epochs,
                         label_smoothing=options.label_smoothing, seed=options.seed,
                         device=options.device)
    assert splits.preprocessing is not None
    preset = splits.preprocessing
    print(f"cifar_resnet20 (width {options.width}) on Fashion-MNIST, {_count(splits.train)} "
          f"training images at {preset.image_size}x{preset.image_size}, augmentation "
          f"{preset.augmentation} (padding {preset.padding}) + flip {preset.flip}; "
          f"{dataclasses.asdict(config)}", flush=True)
    torch.manual_seed(options.seed)
    model = build_model("cifar_resnet20", num_classes=10, width=options.width)
    started = time.perf_counter()

    def report(epoch: int, metrics: dict[str, float]) -> None:
        line = (f"epoch {epoch:3d}/{options.epochs}  loss {metrics['train_loss']:.4f}  "
                f"lr {metrics['lr']:.4f}  {metrics['seconds']:.0f} s  "
                f"elapsed {(time.perf_counter() - started) / 60:.1f} min")
        if options.eval_every and epoch % options.eval_every == 0 and epoch < options.epochs:
            line += f"  test {evaluate(model, splits, 'test', options.device):.4f}"
        print(line, flush=True)

    train_model(model, splits, config, callback=report, eval_split=None)
    accuracy = evaluate(model, splits, "test", options.device)
    verdict = "meets" if accuracy >= GOAL else "misses"
    print(f"\ntest accuracy {accuracy:.4f} on {_count(splits.test)} official test images; "
          f"{verdict} the goal of {GOAL:.3f}; {(time.perf_counter() - started) / 60:.1f} min",
          flush=True)
    if options.save:
        save_weights(model, options.save)
        print(f"weights written to {options.save}")


if __name__ == "__main__":
    main()
