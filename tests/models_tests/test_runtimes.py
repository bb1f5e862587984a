"""Timing in ONNX Runtime and OpenVINO: the reference loaded once, ONNX files as delivered."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

from core.errors import InvalidSpecError
from models import build_model
from models.export import export_onnx
from models.plan import PrunePlan, apply_plan, prunable_groups
from models.runtimes import (
    LoadedNetwork,
    SideBySide,
    available_runtimes,
    tensorrt_present,
    usable_runtimes,
)
from tests.support import REPOSITORY

SHAPE = (3, 16, 16)


@pytest.fixture(scope="module")
def networks() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_model("cifar_resnet20", num_classes=10).eval()
    x = torch.zeros(1, *SHAPE)
    halved = apply_plan(copy.deepcopy(model),
                        PrunePlan.uniform(prunable_groups(model, x), 0.5, round_to=8), x)
    return model, halved.eval()


def test_this_machine_times_in_the_installed_runtimes() -> None:
    assert {"torch", "onnxruntime", "openvino"} <= set(available_runtimes())
    assert usable_runtimes("cpu")[:1] == ["torch"]
    assert {"onnxruntime", "openvino"} <= set(usable_runtimes("cpu"))
    assert not tensorrt_present() or torch.cuda.is_available()


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_a_loaded_network_is_timed_against_a_reference_loaded_once(networks, tmp_path,
                                                                   runtime) -> None:
    model, halved = networks
    side = SideBySide(model, SHAPE, runtime, threads=1)
    loaded = side.load(halved)
    assert isinstance(loaded, LoadedNetwork) and loaded.onnx_bytes > 0
    for _ in range(2):
        reference, candidate = side.compare(loaded, warmup=1, runs=5)
        assert reference.runs == candidate.runs == 5 and candidate.threads == 1
    # An ONNX file as a user downloads it times like the network it holds.
    path = tmp_path / "halved.onnx"
    export_onnx(halved, path, SHAPE)
    _, from_file = side.compare(path, warmup=1, runs=5)
    assert from_file.median_ms > 0 and from_file.batch_size == 1


def test_eager_pytorch_times_networks_not_files(networks, tmp_path) -> None:
    model, halved = networks
    side = SideBySide(model, SHAPE, "torch", threads=1)
    reference, candidate = side.compare(halved, warmup=1, runs=3)
    assert reference.threads == 1 and candidate.runs == 3
    with pytest.raises(InvalidSpecError, match="not ONNX files"):
        side.compare(tmp_path / "any.onnx")


_SIGNAL_AFTER_OPENVINO = """
import copy, gc, os, signal, sys
import torch
from models import build_model
from models.runtimes import SideBySide

model = build_model("cifar_resnet20", num_classes=10).eval()
for _ in range(2):  # sessions made and dropped as a worker's trials make and drop them
    side = SideBySide(model, (3, 16, 16), "openvino", threads=1)
    loaded = side.load(copy.deepcopy(model))
    side.compare(loaded, warmup=1, runs=2)
    del side  # the reference first: not the reverse of the order they were made in
    gc.collect()
    del loaded
    gc.collect()
received = []
signal.signal(signal.SIGUSR1, lambda *_: received.append(1))  # as SIGCHLD, SIGTERM are
os.kill(os.getpid(), signal.SIGUSR1)
assert received == [1]
print("alive")
"""


def test_a_signal_after_openvino_sessions_are_dropped_is_handled_not_fatal() -> None:
    """OpenVINO Cores destroyed out of order left the main thread on a freed signal
    stack, and the next handled signal (SIGCHLD after DataLoader workers, a worker's
    SIGTERM) was a segmentation fault (``core.ov_core``)."""
    done = subprocess.run([sys.executable, "-c", _SIGNAL_AFTER_OPENVINO], cwd=REPOSITORY,
                          env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "alive" in done.stdout, (done.returncode, done.stderr[-2000:])
