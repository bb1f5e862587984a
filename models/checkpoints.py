"""Weights in and out, safely: safetensors, or a plain state dict, and nothing else.

Uploaded weights come from the network, so they are never unpickled with
arbitrary code: a file is read as safetensors when its header says so, else
with ``torch.load(weights_only=True)``, whose restricted unpickler refuses any
global it does not know. Whatever needs more is refused and its code never runs.
Loading into a model names every missing, unexpected or mis-shaped tensor.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import struct
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from core.errors import CheckpointError, UnsafeCheckpointError

__all__ = [
    "WeightsSource",
    "atomic_destination",
    "is_safetensors",
    "load_weights",
    "read_state_dict",
    "save_weights",
    "sha256_file",
    "state_dict_for_saving",
]

#: A weights file's path, its bytes, or an already-read state dict.
WeightsSource = str | os.PathLike[str] | bytes | Mapping[str, Tensor]

_PLAIN_STATE_DICT = ("weights must be safetensors or a plain state dict saved with "
                     "torch.save(model.state_dict())")
# Checkpoint dicts of common training scripts keep the weights under one of these keys.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
# Longest key list an error message spells out before it says "and N more".
_LISTED = 8


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """safetensors = 8-byte little-endian header length, then that many bytes of JSON."""
    if len(head) < 9:
        return False
    (header_length,) = struct.unpack("<Q", head[:8])
    return 0 < header_length <= size - 8 and head[8:9] == b"{"


def is_safetensors(source: str | os.PathLike[str] | bytes) -> bool:
    """Whether a file (path) or a buffer (bytes) starts with a safetensors header."""
    if isinstance(source, bytes):
        return _looks_like_safetensors(source[:9], len(source))
    path = Path(source)
    with path.open("rb") as handle:
        return _looks_like_safetensors(handle.read(9), path.stat().st_size)


def _read_safetensors(source: Path | bytes, name: str) -> dict[str, Tensor]:
    try:
        if isinstance(source, bytes):
            return safetensors.torch.load(source)
        return safetensors.torch.load_file(str(source), device="cpu")
    except (safetensors.SafetensorError, ValueError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{name} looks like safetensors but cannot be read (truncated "
                              f"or corrupt?): {error}") from error


def _read_torch_pickle(data: bytes, name: str) -> Any:
    try:
        with warnings.catch_warnings():
            # Old pickle protocols make torch warn; the restricted unpickler still decides.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        needed = re.search(r"GLOBAL (\S+)", str(error))
        reason = (f"it needs {needed.group(1)}, which plain weights never do" if needed
                  else "it holds pickle instructions that torch.save never writes for weights")
        raise UnsafeCheckpointError(
            f"refused {name}: {_PLAIN_STATE_DICT}; {reason}. Pickled modules, optimizers and "
            "code are never loaded"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, struct.error,
            AttributeError, TypeError, IndexError) as error:
        raise CheckpointError(f"{name} is neither safetensors nor a readable torch.save state "
                              f"dict (truncated or corrupt?): {type(error).__name__}: "
                              f"{str(error)[:300]}") from error


def _unwrap(loaded: Any, name: str) -> dict[str, Tensor]:
    """The name -> tensor mapping inside what ``torch.load`` returned."""
    for _ in range(2):
        if isinstance(loaded, Mapping) and not all(
                isinstance(value, Tensor) for value in loaded.values()):
            inner = next((loaded[key] for key in _WRAPPER_KEYS
                          if isinstance(loaded.get(key), Mapping)), None)
            if inner is not None:
                loaded = inner
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{name} holds a {type(loaded).__name__}, not a state dict; "
                              f"{_PLAIN_STATE_DICT}")
    bad = [f"{key!r} ({type(value).__name__})" for key, value in loaded.items()
           if not isinstance(key, str) or not isinstance(value, Tensor)]
    if bad:
        raise CheckpointError(f"{name} is not a plain state dict: entries that are not named "
                              f"tensors: {_listing(bad)}; {_PLAIN_STATE_DICT}")
    state = dict(loaded)
    if state and all(key.startswith("module.") for key in state):
        # Saved from nn.DataParallel / DistributedDataParallel.
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def read_state_dict(source: str | os.PathLike[str] | bytes) -> dict[str, Tensor]:
    """Read a weights file without ever running code from it.

    Args:
        source: a file path or the file's bytes. safetensors is recognised by its
            header; anything else must be a ``torch.save``-d state dict (possibly
            wrapped as ``{"state_dict": ...}`` or ``{"model": ...}``).

    Returns:
        Parameter / buffer name -> tensor, on the CPU.

    Raises:
        UnsafeCheckpointError: a pickle that needs more than tensors and containers
            (a pickled module, code); it is refused before anything in it runs.
        CheckpointError: missing, empty, truncated or corrupt files, or content that
            is not a name -> tensor mapping.
    """
    if isinstance(source, bytes):
        name, data = "the uploaded weights", source
        if _looks_like_safetensors(data[:9], len(data)):
            return _read_safetensors(data, name)
    else:
        path = Path(source)
        name = f"weights file {str(path)!r}"
        if not path.is_file():
            raise CheckpointError(f"{name} does not exist or is not a file")
        if is_safetensors(path):
            return _read_safetensors(path, name)
        data = path.read_bytes()
    if not data:
        raise CheckpointError(f"{name} is empty; {_PLAIN_STATE_DICT}")
    return _unwrap(_read_torch_pickle(data, name), name)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_LISTED])
    more = len(items) - _LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _shape(tensor: Tensor) -> str:
    return str(list(tensor.shape))


def load_weights(model: nn.Module, source: WeightsSource, strict: bool = True) -> nn.Module:
    """Load weights into ``model`` (in place) after checking that they fit.

    Args:
        model: the network to fill.
        source: a path, the file's bytes, or a state dict already read.
        strict: when True, a tensor missing from the file or one the model lacks
            is an error; shape mismatches are always errors.

    Returns:
        ``model``.

    Raises:
        CheckpointError: naming each offending key, e.g.
            ``layer1.0.conv1.weight: file has [8, 16, 3, 3], model expects [16, 16, 3, 3]``.
        UnsafeCheckpointError: see ``read_state_dict``.
    """
    state = dict(source) if isinstance(source, Mapping) else read_state_dict(source)
    expected = model.state_dict()
    problems = []
    mismatched = [f"{key}: file has {_shape(state[key])}, model expects {_shape(value)}"
                  for key, value in expected.items()
                  if key in state and state[key].shape != value.shape]
    if mismatched:
        problems.append(f"shape mismatch for {len(mismatched)} tensor(s): "
                        f"{_listing(mismatched)}")
    if strict:
        missing = [key for key in expected if key not in state]
        unexpected = [key for key in state if key not in expected]
        if missing:
            problems.append(f"missing from the file ({len(missing)}): {_listing(missing)}")
        if unexpected:
            problems.append(f"not in the model ({len(unexpected)}): {_listing(unexpected)}")
    if problems:
        raise CheckpointError(f"weights do not fit {type(model).__name__}: "
                              + "; ".join(problems)
                              + ". Check the architecture, its arguments (num_classes, width) "
                              "and the prune plan the weights were saved with")
    model.load_state_dict(state, strict=strict)
    return model


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_destination(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it only when the block succeeds.

    Write the file to the yielded path; on success it is flushed to disk and moved
    over ``path`` with ``os.replace`` (readers never see a partial file), on failure
    it is deleted. Missing parent folders are created.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.",
                                              suffix=".partial")
    os.close(handle)
    temporary = Path(temporary_name)
    try:
        yield temporary
        with temporary.open("rb") as written:
            os.fsync(written.fileno())
        temporary.chmod(0o644)
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)


def state_dict_for_saving(model: nn.Module) -> dict[str, Tensor]:
    """The model's state dict as independent, contiguous CPU tensors (safetensors-ready)."""
    return {key: value.detach().to("cpu", copy=True).contiguous()
            for key, value in model.state_dict().items()}


def save_weights(model: nn.Module, path: str | os.PathLike[str],
                 metadata: dict[str, str] | None = None) -> str:
    """Write the model's weights as one safetensors file, atomically.

    Args:
        model: the network.
        path: destination.
        metadata: optional string -> string header metadata.

    Returns:
        The file's sha256 (hex).
    """
    with atomic_destination(path) as temporary:
        safetensors.torch.save_file(state_dict_for_saving(model), str(temporary),
                                    metadata=metadata)
    return sha256_file(path)
