"""Benchmark the data pipeline: loader workers against images in memory, and augmentation.

    python bench/data.py [--only throughput|augmentation] [--images N] [--rounds N]
                         [--format png|jpeg] [--epochs N] [--subset N] [--root DIR]
    python bench/data.py --gpu [--images N] [--rounds N]

CPU (the default), two tables:

* throughput: cifar_resnet20 trained at 32x32 from an ImageFolder of PNG (or JPEG)
  files the benchmark writes, with 0, 1 and 2 loader workers and the default, side
  by side with the same images decoded once and held in memory (the limit: nothing
  left to load). The settings alternate for ``--rounds`` rounds; each run trains
  three epochs and is timed over the last two (no worker start-up, no first-epoch
  warm-up). Medians of images/s, and each setting's share of the limit; then the
  loading alone (no model) for each worker count, the pipeline's own ceiling.
* augmentation: cifar_resnet20 on Fashion-MNIST (``--root``, the four IDX files),
  with the preset augmentation (pad-and-crop + flip) and without, at equal
  epochs; accuracy on the official test split. ``--subset`` and ``--epochs`` scale
  it down.

``--gpu``: resnet50 at 224x224 (bfloat16 or float16 autocast, channels_last) on a
synthetic ImageFolder of 500x375 JPEGs, default loader workers against the same
images decoded in memory on the GPU; sized to finish within 8 minutes on one GPU.

Prints tables; never part of the test suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.spec import PreprocessingSpec
from models.architectures import build_model
from models.data import TensorImages, default_loader_workers, unwrap_subsets
from models.datasets import DataSplits, load_dataset
from models.train import TrainConfig, evaluate, train_model

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
CLASSES = 10


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * width for width in widths], *rows]:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    print(flush=True)


def _write_image(job: tuple[Path, int, int, int, str, int]) -> None:
    """One synthetic photo: smooth colour fields plus noise (so that it compresses and
    decodes like a photo, not like flat colour), its class in the dominant channel."""
    from PIL import Image

    path, label, width, height, kind, seed = job
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.empty((height, width, 3), np.float32)
    for channel in range(3):
        fx, fy, phase = rng.uniform(0.005, 0.05), rng.uniform(0.005, 0.05), rng.uniform(0, 6)
        pixels[..., channel] = 100 + 60 * np.sin(fx * x + fy * y + phase)
    pixels[..., label % 3] += 40 + 4 * label
    pixels += rng.normal(0, 12, pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if kind == "jpeg":
        image.save(path.with_suffix(".jpg"), quality=90)
    else:
        image.save(path.with_suffix(".png"))


def write_image_folder(root: Path, images: int, width: int, height: int, kind: str,
                       processes: int) -> Path:
    """train/ and val/ (a tenth as many) of CLASSES class folders."""
    jobs = []
    for split, count in (("train", images), ("val", max(CLASSES, images // 10))):
        for index in range(count):
            label = index % CLASSES
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append((folder / str(index), label, width, height, kind, index))
    with Pool(processes) as pool:
        pool.map(_write_image, jobs, chunksize=64)
    return root


def every_training_image(splits: DataSplits) -> DataSplits:
    """The splits with train = all of the ImageFolder's train/ (val and calibration
    carved out of it included), as the in-memory copy holds them."""
    files, _rows = unwrap_subsets(splits.train)
    return dataclasses.replace(splits, train=files)


def _count(dataset: Any) -> int:
    return len(dataset)


def decoded_in_memory(files: DataSplits, device: str) -> DataSplits:
    """The same training images decoded once (resized and centre-cropped as evaluation
    does) and held as one uint8 tensor, augmented on ``device`` like any in-memory split."""
    loader = torch.utils.data.DataLoader(
        files.train, batch_size=256, num_workers=default_loader_workers(device),
        sampler=[(index, None) for index in range(_count(files.train))])
    pixels, labels = zip(*loader, strict=True)
    assert files.preprocessing is not None
    train = TensorImages(torch.cat(pixels), torch.cat(labels), files.preprocessing).to(device)
    return dataclasses.replace(files, train=train, val=train, test=train, calibration=train)


def images_per_second(splits: DataSplits, arch: str, batch_size: int, device: str,
                      epochs: int = 3) -> float:
    """Training throughput over all epochs but the first (start-up and warm-up excluded)."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=CLASSES)
    ends: list[float] = []

    def at_epoch_end(_epoch: int, _metrics: dict[str, float]) -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        ends.append(time.perf_counter())

    train_model(model, splits, TrainConfig(epochs=epochs, batch_size=batch_size, device=device,
                                           learning_rate=0.01),
                callback=at_epoch_end, eval_split=None)
    trained = (_count(splits.train) // batch_size) * batch_size * (epochs - 1)
    return trained / (ends[-1] - ends[0])


def loading_only(splits: DataSplits, batch_size: int, epochs: int = 3) -> float:
    """Images/s of the augmented training batches alone (no model): the pipeline's own
    ceiling, which the share of the limit hides when compute is slow."""
    batches = splits.loader("train", batch_size, shuffle=True, seed=0, augment=True)
    rates = []
    for epoch in range(epochs):
        batches.reseed(epoch)
        began, count = time.perf_counter(), 0
        for _images, labels in batches:
            count += len(labels)
        rates.append(count / (time.perf_counter() - began))
    return statistics.median(rates)


def compare(settings: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Median of each setting over ``rounds`` rounds, the settings alternating."""
    samples: dict[str, list[float]] = {name: [] for name in settings}
    for round_number in range(rounds):
        for name, measure in settings.items():
            samples[name].append(measure())
            print(f"  round {round_number + 1}/{rounds} {name}: {samples[name][-1]:.0f} "
                  "images/s", file=sys.stderr, flush=True)
    return {name: statistics.median(values) for name, values in samples.items()}


def throughput(options: argparse.Namespace, root: Path) -> None:
    device = "cpu"
    write_image_folder(root, options.images, 32, 32, options.format, os.cpu_count() or 1)
    default = default_loader_workers(device)
    counts = sorted({0, 1, 2, default})
    files = {workers: every_training_image(load_dataset(
        "imagefolder", image_size=32, root=root, seed=0, loader_workers=workers))
        for workers in counts}
    memory = decoded_in_memory(files[0], device)

    def run(splits: DataSplits) -> Callable[[], float]:
        return lambda: images_per_second(splits, "cifar_resnet20", options.batch_size, device)

    settings = {f"files, {workers} workers{' (default)' if workers == default else ''}":
                run(splits) for workers, splits in files.items()}
    settings["in memory (limit)"] = lambda: images_per_second(memory, "cifar_resnet20",
                                                              options.batch_size, device)
    print(f"cifar_resnet20, 32x32, {options.images} {options.format.upper()} images, batch "
          f"{options.batch_size}, {torch.get_num_threads()} torch threads, "
          f"{len(os.sched_getaffinity(0))} cores, {options.rounds} rounds, medians of "
          "epochs 2-3 of each run", flush=True)
    medians = compare(settings, options.rounds)
    limit = medians["in memory (limit)"]
    _table(["setting", "images/s", "of limit"],
           [[name, f"{value:.0f}", f"{value / limit:.2f}"] for name, value in medians.items()])
    alone = {workers: loading_only(splits, options.batch_size) for workers, splits in files.items()}
    print("loading alone (augmented training batches, no model), median of 3 epochs")
    _table(["setting", "images/s", "ms per image"],
           [[f"files, {workers} workers", f"{value:.0f}", f"{1000 / value:.2f}"]
            for workers, value in alone.items()])


def augmentation(options: argparse.Namespace) -> None:
    rows = []
    for label, spec in (("pad-crop + flip (preset)", None),
                        ("none", PreprocessingSpec(augmentation="none", flip=False))):
        splits = load_dataset("fashion_mnist", root=options.root, seed=0, preprocessing=spec)
        splits = splits.limit("train", options.subset).limit("test", options.test_images)
        torch.manual_seed(0)
        model = build_model("cifar_resnet20", num_classes=CLASSES)
        started = time.perf_counter()
        config = TrainConfig(epochs=options.epochs, batch_size=128, learning_rate=0.05,
                             reference_batch_size=64, warmup_epochs=min(1.0, options.epochs / 5),
                             device=options.device)
        train_model(model, splits, config, eval_split=None)
        rows.append([label, str(options.epochs), str(_count(splits.train)),
                     str(_count(splits.test)),
                     f"{evaluate(model, splits, 'test', options.device):.4f}",
                     f"{time.perf_counter() - started:.0f}"])
    print(f"cifar_resnet20 on Fashion-MNIST ({options.root}), 28x28, equal epochs; accuracy on "
          "the official test split", flush=True)
    _table(["augmentation", "epochs", "train", "test", "test_acc", "seconds"], rows)


def gpu_profile(options: argparse.Namespace, root: Path) -> None:
    if not torch.cuda.is_available():
        sys.exit("--gpu needs a CUDA GPU")
    device = "cuda"
    torch.backends.cudnn.benchmark = True
    started = time.perf_counter()
    cores = len(os.sched_getaffinity(0))
    write_image_folder(root, options.images, 500, 375, "jpeg", cores)
    written = time.perf_counter() - started
    default = default_loader_workers(device)
    files = every_training_image(
        load_dataset("imagefolder", image_size=224, root=root, seed=0).to_device(device))
    memory = decoded_in_memory(files, device)
    half = dataclasses.replace(files, loading=dataclasses.replace(files.loading,
                                                                  workers=max(1, default // 2)))
    batch = options.batch_size
    settings: dict[str, Callable[[], float]] = {
        f"JPEG files, {default} workers (default)":
            lambda: images_per_second(files, "resnet50", batch, device, options.epochs),
        f"JPEG files, {max(1, default // 2)} workers":
            lambda: images_per_second(half, "resnet50", batch, device, options.epochs),
        "in memory on the GPU (limit)":
            lambda: images_per_second(memory, "resnet50", batch, device, options.epochs),
    }
    print(f"{torch.cuda.get_device_name()}, resnet50 at 224x224, autocast "
          f"{'bfloat16' if torch.cuda.is_bf16_supported() else 'float16'}, channels_last, "
          f"batch {batch}, {options.images} JPEGs of 500x375 (written in {written:.0f} s), "
          f"{cores} cores, {options.rounds} rounds", flush=True)
    medians = compare(settings, options.rounds)
    limit = medians["in memory on the GPU (limit)"]
    _table(["setting", "images/s", "of limit"],
           [[name, f"{value:.0f}", f"{value / limit:.2f}"] for name, value in medians.items()])
    print(f"total {time.perf_counter() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="the resnet50 / JPEG profile")
    parser.add_argument("--only", choices=["throughput", "augmentation"])
    parser.add_argument("--images", type=int, default=None,
                        help="training images written (CPU 2048, --gpu 4096)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="CPU 64, --gpu 128")
    parser.add_argument("--format", choices=["png", "jpeg"], default="png")
    parser.add_argument("--epochs", type=int, default=None,
                        help="augmentation: epochs of each run (10); --gpu: epochs a run (4)")
    parser.add_argument("--subset", type=int, default=None,
                        help="augmentation: training images (default all 51,000)")
    parser.add_argument("--test-images", type=int, default=None,
                        help="augmentation: first test images scored (default all 10,000)")
    parser.add_argument("--root", default=FASHION_MNIST, help="Fashion-MNIST's IDX files")
    parser.add_argument("--device", default="cpu", help="augmentation: where to train")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads on CPU (default: torch's, one per core)")
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    options.images = options.images or (4096 if options.gpu else 2048)
    options.batch_size = options.batch_size or (128 if options.gpu else 64)
    with tempfile.TemporaryDirectory(prefix="topiary-bench-data-") as folder:
        if options.gpu:
            options.epochs = options.epochs or 4
            gpu_profile(options, Path(folder))
            return
        options.epochs = options.epochs or 10
        if options.only in (None, "throughput"):
            throughput(options, Path(folder))
        if options.only in (None, "augmentation"):
            augmentation(options)


if __name__ == "__main__":
    main()
