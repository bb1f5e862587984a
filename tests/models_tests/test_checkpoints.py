from __future__ import annotations

import builtins
import hashlib
import io
import os
import pickle
from pathlib import Path

import pytest
import safetensors.torch
import torch

from core.errors import CheckpointError, UnsafeCheckpointError
from models.architectures import build_model
from models.checkpoints import (
    atomic_destination,
    load_weights,
    read_state_dict,
    save_weights,
    sha256_file,
)


def _resnet(seed: int = 0, **arguments: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("cifar_resnet20", **arguments).eval()


def _assert_same_state(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def _torch_saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class _OpensAFile:
    """Unpickling this creates ``marker`` (what a hostile checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (builtins.open, (str(self.marker), "w"))


class _RunsAShellCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _hostile_files(marker: Path) -> dict[str, bytes]:
    weights = {"conv.weight": torch.zeros(2, 2)}
    return {
        "torch.save with open()": _torch_saved({**weights, "x": _OpensAFile(marker)}),
        "torch.save with os.system": _torch_saved({**weights, "x": _RunsAShellCommand(marker)}),
        "raw pickle protocol 2": pickle.dumps({"x": _OpensAFile(marker)}, protocol=2),
        "raw pickle protocol 5": pickle.dumps({"x": _RunsAShellCommand(marker)}, protocol=5),
    }


def test_the_hostile_payloads_do_run_when_unpickled_plainly(tmp_path: Path) -> None:
    # Guards the refusal test below: its payloads really would create the marker.
    for index, kind in enumerate(_hostile_files(tmp_path)):
        marker = tmp_path / f"plain_marker_{index}"
        data = _hostile_files(marker)[kind]
        if data.startswith(b"PK"):
            torch.load(io.BytesIO(data), weights_only=False)
        else:
            pickle.loads(data)
        assert marker.exists(), kind


@pytest.mark.parametrize("kind", list(_hostile_files(Path("m"))))
def test_a_pickle_carrying_code_is_refused_and_its_code_never_runs(tmp_path: Path,
                                                                   kind: str) -> None:
    marker = tmp_path / "marker"
    data = _hostile_files(marker)[kind]
    path = tmp_path / "weights.pt"
    path.write_bytes(data)
    for source in (path, str(path), data):
        with pytest.raises(UnsafeCheckpointError, match="safetensors or a plain state dict"):
            read_state_dict(source)
        with pytest.raises(CheckpointError):
            load_weights(_resnet(), source)
    assert not marker.exists()
    assert sorted(os.listdir(tmp_path)) == ["weights.pt"]


def test_a_pickled_whole_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(UnsafeCheckpointError, match="needs torch.nn.modules.linear.Linear"):
        read_state_dict(path)


def test_safetensors_round_trip_and_sha256(tmp_path: Path) -> None:
    model = _resnet(seed=1)
    path = tmp_path / "weights.safetensors"
    digest = save_weights(model, path)
    assert digest == sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    _assert_same_state(read_state_dict(path), model.state_dict())
    _assert_same_state(read_state_dict(path.read_bytes()), model.state_dict())

    other = load_weights(_resnet(seed=2), path)
    example = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(other(example), model(example))
    assert [p.name for p in tmp_path.iterdir()] == ["weights.safetensors"]


def test_plain_and_wrapped_state_dicts_are_read(tmp_path: Path) -> None:
    state = _resnet(seed=3).state_dict()
    wrapped = {
        "plain": state,
        "state_dict wrapper": {"state_dict": state, "epoch": 7, "optimizer": {"lr": 0.1}},
        "model wrapper": {"model": state, "best_accuracy": 0.9},
        "DataParallel prefix": {f"module.{key}": value for key, value in state.items()},
    }
    for kind, content in wrapped.items():
        path = tmp_path / "weights.pt"
        torch.save(content, path)
        _assert_same_state(read_state_dict(path), state)
        assert read_state_dict(path.read_bytes()).keys() == state.keys(), kind


def test_corrupt_truncated_and_odd_files_give_clear_errors(tmp_path: Path) -> None:
    state = _resnet().state_dict()
    torch_bytes = _torch_saved(state)
    safetensors_bytes = safetensors.torch.save(
        {key: value.contiguous() for key, value in state.items()})
    cases = {
        "torch zip cut in half": (torch_bytes[: len(torch_bytes) // 2], "truncated or corrupt"),
        "safetensors cut short": (safetensors_bytes[:-100], "truncated or corrupt"),
        "text": (b"this is not a checkpoint at all", "neither safetensors nor"),
        "empty": (b"", "empty"),
        "list of tensors": (_torch_saved([torch.zeros(2)]), "holds a list, not a state dict"),
        "dict with non-tensors": (_torch_saved({"a": torch.zeros(1), "b": 3}), "'b' \\(int\\)"),
    }
    for kind, (data, message) in cases.items():
        path = tmp_path / "weights.bin"
        path.write_bytes(data)
        for source in (path, data):
            with pytest.raises(CheckpointError, match=message) as caught:
                read_state_dict(source)
            assert not isinstance(caught.value, UnsafeCheckpointError), kind
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "missing.safetensors")


def test_shape_mismatch_names_the_key_and_both_shapes() -> None:
    state = dict(_resnet().state_dict())
    state["layer1.0.conv1.weight"] = torch.zeros(8, 16, 3, 3)
    with pytest.raises(CheckpointError) as caught:
        load_weights(_resnet(), state)
    assert ("layer1.0.conv1.weight: file has [8, 16, 3, 3], model expects [16, 16, 3, 3]"
            in str(caught.value))
    with pytest.raises(CheckpointError, match="layer1.0.conv1.weight: file has"):
        load_weights(_resnet(), state, strict=False)


def test_missing_and_unexpected_keys_are_named_and_strict_false_allows_them() -> None:
    source = _resnet(seed=4)
    state = dict(source.state_dict())
    del state["fc.bias"]
    state["extra.head.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as caught:
        load_weights(_resnet(), state)
    message = str(caught.value)
    assert "missing from the file (1): fc.bias" in message
    assert "not in the model (1): extra.head.weight" in message

    target = load_weights(_resnet(seed=5), state, strict=False)
    assert torch.equal(target.fc.weight, source.fc.weight)


def test_a_whole_architecture_mismatch_is_summarised() -> None:
    narrow = _resnet(width=8).state_dict()
    with pytest.raises(CheckpointError, match=r"shape mismatch for \d+ tensor\(s\).* and \d+ more"):
        load_weights(_resnet(), narrow)


def test_atomic_destination_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    final = tmp_path / "out" / "model.bin"
    with atomic_destination(final) as temporary:
        temporary.write_bytes(b"first")
    assert final.read_bytes() == b"first"
    with pytest.raises(RuntimeError), atomic_destination(final) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("writer crashed")
    assert final.read_bytes() == b"first"
    assert os.listdir(final.parent) == ["model.bin"]
