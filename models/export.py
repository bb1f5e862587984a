"""The pruned checkpoint (one safetensors file that rebuilds itself) and deployment exports.

A pruned network is stored as its weights plus, in the safetensors header, what
is needed to rebuild its shape: the registry architecture and its arguments,
the prune plan (which names groups and blocks of the unpruned network), the
input shape, the measured metrics and the preprocessing an input needs (resize,
crop, mean, std, channels; ``models.data.Preprocessing.to_metadata``).
``load_pruned`` builds the original network, applies the plan (which channels it
keeps does not matter: every weight is overwritten), loads the weights strictly
and returns the model. No pickle is involved anywhere. ONNX, ``torch.export``
(.pt2) and TorchScript files sit beside it for deployment, each carrying the
preprocessing (ONNX ``metadata_props``, the others' extra files under
``PREPROCESSING_KEY``). Every file is written under a temporary name and moved
into place.
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn

from core.errors import CheckpointError, ExportError
from models.architectures import build_model
from models.checkpoints import (
    atomic_destination,
    load_weights,
    read_state_dict,
    sha256_file,
    state_dict_for_saving,
)
from models.plan import PrunePlan, apply_plan

__all__ = [
    "FORMAT_VERSION",
    "METADATA_PREFIX",
    "PREPROCESSING_KEY",
    "export_onnx",
    "export_program",
    "export_torchscript",
    "load_pruned",
    "read_pruned_metadata",
    "save_pruned",
]

#: Version of the metadata layout below; readers refuse newer versions.
FORMAT_VERSION = 1
#: Prefix of every header metadata key Topiary writes.
METADATA_PREFIX = "topiary."
#: Where every export keeps the preprocessing, as JSON.
PREPROCESSING_KEY = f"{METADATA_PREFIX}preprocessing"
# Metadata fields stored as JSON strings (safetensors metadata values must be strings).
_JSON_FIELDS = ("arch_arguments", "plan", "input_shape", "metrics")
# JSON fields that files written before they existed lack (read as None).
_OPTIONAL_JSON_FIELDS = ("preprocessing",)
# Largest header read_pruned_metadata accepts (safetensors itself caps it at 100 MB).
_MAX_HEADER_BYTES = 100_000_000


def _to_json(name: str, value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{name} must be JSON-serialisable plain data (numbers, strings, "
                              f"lists, dicts; no NaN): {error}") from error


def _example_input(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1) -> Tensor:
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    return torch.zeros(batch_size, *input_shape, device=device)


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not shape or not all(isinstance(side, int) and side > 0 for side in shape):
        raise CheckpointError(f"input_shape must be positive integers (channels, height, "
                              f"width) without the batch, got {list(input_shape)}")
    return shape


def save_pruned(model: nn.Module, path: str | os.PathLike[str], *, arch: str,
                arch_arguments: Mapping[str, Any], plan: PrunePlan | Mapping[str, Any],
                input_shape: Sequence[int], metrics: Mapping[str, Any],
                preprocessing: Mapping[str, Any] | None = None, verify: bool = True) -> str:
    """Write a pruned network as ONE safetensors file that can rebuild itself.

    Args:
        model: the pruned network (``apply_plan(build_model(arch, **arch_arguments),
            plan, ...)``, then fine-tuned).
        path: destination; written atomically (temporary name, then ``os.replace``).
        arch: registry name of the UNPRUNED architecture.
        arch_arguments: its builder arguments, ``num_classes`` included.
        plan: the plan that was applied (a ``PrunePlan`` or its ``to_dict()``).
        input_shape: one input without the batch, e.g. ``(3, 32, 32)``.
        metrics: measured numbers (accuracy, latency, ...), JSON-serialisable.
        preprocessing: how to turn an image into the input
            (``models.data.Preprocessing.to_metadata()``).
        verify: rebuild the architecture from the metadata first and refuse to
            write a file whose tensors would not fit it.

    Returns:
        The file's sha256 (hex), e.g. for an ``ETag``.

    Raises:
        CheckpointError: metadata that is not plain data, or (``verify``) a model
            whose shapes do not match ``arch`` + ``arch_arguments`` + ``plan``.
    """
    plan = plan if isinstance(plan, PrunePlan) else PrunePlan.from_dict(dict(plan))
    shape = _check_input_shape(input_shape)
    tensors = state_dict_for_saving(model)
    metadata = {
        "format": "pt",
        f"{METADATA_PREFIX}format_version": str(FORMAT_VERSION),
        f"{METADATA_PREFIX}arch": arch,
        f"{METADATA_PREFIX}arch_arguments": _to_json("arch_arguments", dict(arch_arguments)),
        f"{METADATA_PREFIX}plan": plan.to_json(),
        f"{METADATA_PREFIX}input_shape": _to_json("input_shape", list(shape)),
        f"{METADATA_PREFIX}metrics": _to_json("metrics", dict(metrics)),
    }
    if preprocessing is not None:
        metadata[PREPROCESSING_KEY] = _to_json("preprocessing", dict(preprocessing))
    if verify:
        _rebuild(arch, dict(arch_arguments), plan, shape, tensors,
                 what=f"the model to save as {str(path)!r}")
    with atomic_destination(path) as temporary:
        safetensors.torch.save_file(tensors, str(temporary), metadata=metadata)
    return sha256_file(path)


def _read_header(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{str(path)!r} is too short to be a safetensors file")
            (length,) = struct.unpack("<Q", prefix)
            if not 0 < length <= min(_MAX_HEADER_BYTES, path.stat().st_size - 8):
                raise CheckpointError(f"{str(path)!r} is not a safetensors file (header "
                                      f"length {length} does not fit the file)")
            header = json.loads(handle.read(length))
    except FileNotFoundError as error:
        raise CheckpointError(f"pruned checkpoint {str(path)!r} does not exist") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{str(path)!r} has a corrupt safetensors header: {error}") from error
    if not isinstance(header, dict):
        raise CheckpointError(f"{str(path)!r} has a corrupt safetensors header (not an object)")
    return header


def read_pruned_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a pruned checkpoint, parsed, without building anything.

    Only the file's header is read (no tensors, no torch).

    Returns:
        ``{"format_version": int, "arch": str, "arch_arguments": dict, "plan": dict,
        "input_shape": list[int], "metrics": dict, "preprocessing": dict | None}``
        (None for files written before checkpoints recorded it).

    Raises:
        CheckpointError: not a safetensors file, not written by ``save_pruned``,
            a newer format version, or malformed fields.
    """
    file = Path(path)
    raw = _read_header(file).get("__metadata__") or {}
    fields = ("format_version", "arch", *_JSON_FIELDS)
    missing = [name for name in fields if f"{METADATA_PREFIX}{name}" not in raw]
    if missing:
        raise CheckpointError(f"{str(file)!r} is not a Topiary pruned checkpoint: its "
                              f"metadata lacks {', '.join(METADATA_PREFIX + m for m in missing)}"
                              "; write it with models.export.save_pruned")
    try:
        version = int(raw[f"{METADATA_PREFIX}format_version"])
    except ValueError as error:
        raise CheckpointError(f"{str(file)!r}: format_version is not an integer") from error
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{str(file)!r} uses checkpoint format {version}; this Topiary "
                              f"reads up to {FORMAT_VERSION}. Upgrade Topiary to load it")
    metadata: dict[str, Any] = {"format_version": version,
                                "arch": raw[f"{METADATA_PREFIX}arch"]}
    for name in (*_JSON_FIELDS, *_OPTIONAL_JSON_FIELDS):
        if f"{METADATA_PREFIX}{name}" not in raw:
            metadata[name] = None
            continue
        try:
            metadata[name] = json.loads(raw[f"{METADATA_PREFIX}{name}"])
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{str(file)!r}: metadata {METADATA_PREFIX}{name} is not "
                                  f"valid JSON: {error}") from error
    return metadata


def _rebuild(arch: str, arch_arguments: dict[str, Any], plan: PrunePlan,
             input_shape: tuple[int, ...], tensors: Mapping[str, Tensor], what: str) -> nn.Module:
    """Build ``arch``, apply ``plan`` and load ``tensors`` strictly."""
    model = build_model(arch, **arch_arguments)
    apply_plan(model, plan, torch.zeros(1, *input_shape))
    try:
        return load_weights(model, tensors, strict=True)
    except CheckpointError as error:
        raise CheckpointError(f"{what} does not match {arch} pruned by its plan: {error}") from None


def load_pruned(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a pruned network saved by ``save_pruned``.

    Args:
        path: the safetensors file.
        device: where the returned model lives.

    Returns:
        The network in eval mode on ``device``, with the parsed metadata (see
        ``read_pruned_metadata``) as its ``topiary_metadata`` attribute.

    Raises:
        CheckpointError: not a pruned checkpoint, or tensors that do not fit the
            rebuilt architecture (each offending key named).
        UnknownArchitectureError: the architecture is not installed on this server.
        InvalidPlanError: the plan does not fit the architecture.
    """
    metadata = read_pruned_metadata(path)
    input_shape = metadata["input_shape"]
    if not isinstance(input_shape, list):
        raise CheckpointError(f"{str(path)!r}: input_shape must be a list, got {input_shape!r}")
    model = _rebuild(metadata["arch"], dict(metadata["arch_arguments"]),
                     PrunePlan.from_dict(metadata["plan"]), _check_input_shape(input_shape),
                     read_state_dict(path), what=f"pruned checkpoint {str(path)!r}")
    model.to(device).eval()
    model.topiary_metadata = metadata  # type: ignore[assignment]
    return model


def _extra_files(preprocessing: Mapping[str, Any] | None) -> dict[str, str]:
    if preprocessing is None:
        return {}
    return {PREPROCESSING_KEY: _to_json("preprocessing", dict(preprocessing))}


def _add_onnx_metadata(path: Path, properties: Mapping[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                        **properties})
    onnx.save(model, str(path))


def export_onnx(model: nn.Module, path: str | os.PathLike[str], input_shape: Sequence[int],
                dynamic_batch: bool = True,
                preprocessing: Mapping[str, Any] | None = None) -> None:
    """Export to ONNX (one self-contained file; input ``input``, output ``logits``).

    Uses the ``torch.export``-based exporter and falls back to the TorchScript-based
    one for models ``torch.export`` cannot capture.

    Args:
        model: the network; exported in eval mode (its mode is restored).
        path: destination; written atomically.
        input_shape: one input without the batch.
        dynamic_batch: make the batch dimension symbolic (any batch size runs).
        preprocessing: written as JSON into the model's ``metadata_props`` under
            ``PREPROCESSING_KEY`` (ONNX Runtime: ``session.get_modelmeta()
            .custom_metadata_map``).

    Raises:
        ExportError: both exporters failed (both reasons given).
    """
    shape = _check_input_shape(input_shape)
    example = (_example_input(model, shape, batch_size=2),)
    was_training = model.training
    model.eval()
    try:
        with atomic_destination(path) as temporary:
            try:
                torch.onnx.export(
                    model, example, str(temporary), dynamo=True, external_data=False,
                    verbose=False, input_names=["input"], output_names=["logits"],
                    dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamic_batch else None,
                )
            except Exception as dynamo_error:  # noqa: BLE001 - any failure: try the other one
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", DeprecationWarning)
                        warnings.simplefilter("ignore", FutureWarning)
                        torch.onnx.export(
                            model, example, str(temporary), dynamo=False,
                            input_names=["input"], output_names=["logits"],
                            dynamic_axes=({"input": {0: "batch"}, "logits": {0: "batch"}}
                                          if dynamic_batch else None),
                        )
                except Exception as legacy_error:
                    raise ExportError(
                        f"ONNX export of {type(model).__name__} failed with both exporters: "
                        f"torch.export-based: {dynamo_error}; TorchScript-based: {legacy_error}"
                    ) from legacy_error
            if preprocessing is not None:
                _add_onnx_metadata(temporary, _extra_files(preprocessing))
    finally:
        model.train(was_training)


def export_program(model: nn.Module, path: str | os.PathLike[str], input_shape: Sequence[int],
                   preprocessing: Mapping[str, Any] | None = None) -> None:
    """Export a ``torch.export`` program (``.pt2``; ``torch.export.load(path).module()``
    runs it without our code), with a symbolic batch size.

    Args:
        model: the network; exported in eval mode (its mode is restored).
        path: destination; written atomically.
        input_shape: one input without the batch.
        preprocessing: stored as the extra file ``PREPROCESSING_KEY`` (JSON); read it
            with ``torch.export.load(path, extra_files={PREPROCESSING_KEY: ""})``.

    Raises:
        ExportError: ``torch.export`` cannot capture the model.
    """
    shape = _check_input_shape(input_shape)
    example = (_example_input(model, shape, batch_size=2),)
    was_training = model.training
    model.eval()
    try:
        try:
            program = torch.export.export(model, example,
                                          dynamic_shapes=({0: torch.export.Dim("batch")},))
        except Exception as error:
            raise ExportError(f"torch.export of {type(model).__name__} failed: {error}") from error
        with atomic_destination(path) as temporary, temporary.open("wb") as file:
            # A file object: given a path not ending in .pt2, torch.export.save warns.
            torch.export.save(program, file, extra_files=_extra_files(preprocessing))
    finally:
        model.train(was_training)


def export_torchscript(model: nn.Module, path: str | os.PathLike[str],
                       input_shape: Sequence[int],
                       preprocessing: Mapping[str, Any] | None = None) -> None:
    """Export a traced TorchScript module (``torch.jit.load`` reads it without our code).

    Tracing fixes control flow, which our CNNs do not have; the batch size stays free.
    TorchScript is deprecated in PyTorch (``torch.jit.load`` warns); it stays for
    LibTorch (C++) deployments, where ``torch::jit::load`` is still the way in.

    Args:
        model: the network; traced in eval mode (its mode is restored).
        path: destination; written atomically.
        input_shape: one input without the batch.
        preprocessing: stored as the extra file ``PREPROCESSING_KEY`` (JSON);
            ``torch.jit.load(path, _extra_files={PREPROCESSING_KEY: ""})`` reads it.

    Raises:
        ExportError: the model cannot be traced.
    """
    shape = _check_input_shape(input_shape)
    example = _example_input(model, shape, batch_size=2)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # torch.jit is deprecated upstream but still the format most runtimes load.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            try:
                traced = torch.jit.trace(model, example)
            except Exception as error:
                raise ExportError(f"TorchScript tracing of {type(model).__name__} failed: "
                                  f"{error}") from error
            with atomic_destination(path) as temporary:
                torch.jit.save(traced, str(temporary),
                               _extra_files=_extra_files(preprocessing))
    finally:
        model.train(was_training)
