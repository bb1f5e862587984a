"""Checks an uploaded weights file without torch and without ever unpickling it.

Two formats are accepted:

* safetensors: the header is parsed and its offsets checked against the file by
  ``safetensors.safe_open(path, framework="numpy")`` (no tensor is read);
* a state dict saved by ``torch.save`` (a zip whose ``data.pkl`` is a pickle): the
  pickle is walked opcode by opcode with ``pickletools`` on a simulated stack,
  and every global it names must be on an allow-list of plain containers,
  tensor rebuilders, storage types and dtypes. Anything that would import or
  call other code is refused. Workers later load it with
  ``torch.load(weights_only=True)``, which enforces the same rule a second time.
"""

from __future__ import annotations

import pickletools
import struct
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core.errors import UnsafeCheckpointError
from service.errors import InvalidUploadError

# Bounds of what one upload may cost the API process. A state dict's pickle takes about
# 120 bytes and 35 opcodes per tensor (ResNet-152: 932 tensors, 115 KB, 32k opcodes).
MAX_PICKLE_BYTES = 4 * 1024 * 1024
MAX_COMPRESSION_RATIO = 100  # a pickle deflates 3 to 10 times; a bomb a thousand
MIN_RATIO_CHECKED_BYTES = 1024 * 1024  # below it, any ratio (small pickles deflate well)
MAX_SCAN_SECONDS = 2.0
MAX_STACK = 200_000
MAX_MEMO = 500_000
MAX_ZIP_ENTRIES = 50_000
_CHUNK = 64 * 1024
_ENCRYPTED = 0x1
_ACCEPTED_COMPRESSION = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
_END_RECORD_MAGIC = b"PK\x05\x06"
_ZIP64_LOCATOR_MAGIC = b"PK\x06\x07"
_ZIP64_END_RECORD_MAGIC = b"PK\x06\x06"
_END_RECORD_SEARCH = 22 + 65535  # the record and the longest comment after it
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})
_MEMO_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL = b"\x80"

_DTYPES = ("float32", "float", "float64", "double", "float16", "half", "bfloat16", "int64",
           "long", "int32", "int", "int16", "short", "int8", "uint8", "bool", "complex64",
           "complex128", "cfloat", "cdouble")
_STORAGES = ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte",
             "Bool", "ComplexFloat", "ComplexDouble")
ALLOWED_GLOBALS = frozenset({
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("torch", "UntypedStorage"),
    *(("torch", f"{kind}Storage") for kind in _STORAGES),
    *(("torch", dtype) for dtype in _DTYPES),
})
_TENSOR_REBUILDER = ("torch._utils", "_rebuild_tensor_v2")
# Opcodes that reach code without naming it through GLOBAL / STACK_GLOBAL.
_REFUSED_OPCODES = frozenset({"INST", "OBJ", "EXT1", "EXT2", "EXT4", "PERSID"})
_STRING_OPCODES = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE",
                             "SHORT_BINUNICODE", "BINUNICODE8"})


@dataclass(frozen=True)
class WeightsInfo:
    """What an accepted weights file holds."""

    format: Literal["safetensors", "torch_state_dict"]
    tensor_count: int


class _Mark:
    """The pickle MARK on the simulated stack."""


class _Value:
    """Anything on the simulated stack that is not a string or a global."""


_MARK, _VALUE = _Mark(), _Value()


def _refuse(module: str, name: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"the pickle in this checkpoint refers to {module}.{name}, which could run code "
        "when loaded; upload a plain state dict (torch.save(model.state_dict(), path)) "
        "or, better, a safetensors file")


def _pop(stack: list[object], count: int) -> list[object]:
    if count > len(stack):
        raise InvalidUploadError("the checkpoint's pickle is malformed (stack underflow)")
    popped = stack[len(stack) - count:]
    del stack[len(stack) - count:]
    return popped


def _pop_to_mark(stack: list[object]) -> None:
    while stack:
        if stack.pop() is _MARK:
            return
    raise InvalidUploadError("the checkpoint's pickle is malformed (no MARK)")


def _effect(opcode: pickletools.OpcodeInfo) -> tuple[bool, int, tuple[object, ...]]:
    """(pops to a MARK, items popped above it or in all, what it pushes)."""
    before, after = opcode.stack_before, opcode.stack_after
    to_mark = pickletools.markobject in before
    count = before.index(pickletools.markobject) if to_mark else len(before)
    return to_mark, count, tuple(_MARK if item is pickletools.markobject else _VALUE
                                 for item in after)


# Read once: per opcode, what it does to the simulated stack.
_EFFECTS = {opcode.name: _effect(opcode) for opcode in pickletools.opcodes}


def _too_big(what: str) -> InvalidUploadError:
    return InvalidUploadError(f"the checkpoint's pickle is too {what} for a state dict; "
                              "upload the weights as safetensors")


def scan_pickle(data: bytes, max_seconds: float = MAX_SCAN_SECONDS) -> int:
    """Check a pickle statically; never unpickles it.

    Args:
        data: the pickle's bytes.
        max_seconds: CPU time the scan may take (a state dict's takes milliseconds).

    Returns:
        How many tensors it rebuilds.

    Raises:
        UnsafeCheckpointError: it names a global outside ``ALLOWED_GLOBALS`` or uses an
            opcode that can reach code otherwise.
        InvalidUploadError: it is not a well-formed pickle, or is not shaped like a state
            dict's (too slow to scan, too deep a stack, too many memo entries).
    """
    stack: list[object] = []
    memo: dict[int, object] = {}
    tensors = 0
    deadline = time.process_time() + max_seconds
    try:
        for count, (opcode, arg, _position) in enumerate(pickletools.genops(data)):
            if count % 4096 == 0:
                if time.process_time() > deadline:
                    raise _too_big("slow to check")
                if len(stack) > MAX_STACK or len(memo) > MAX_MEMO:
                    raise _too_big("deep" if len(stack) > MAX_STACK else "large")
            name = opcode.name
            if name in _REFUSED_OPCODES:
                raise UnsafeCheckpointError(
                    f"the checkpoint's pickle uses {name}, which can run code when loaded; "
                    "upload a plain state dict or a safetensors file")
            if name == "GLOBAL":
                module, attribute = str(arg).split(" ", 1)
                if (module, attribute) not in ALLOWED_GLOBALS:
                    raise _refuse(module, attribute)
                stack.append((module, attribute))
            elif name == "STACK_GLOBAL":
                named_module, named_attribute = _pop(stack, 2)
                if not (isinstance(named_module, str) and isinstance(named_attribute, str)):
                    raise UnsafeCheckpointError("the checkpoint's pickle builds a global name "
                                                "that cannot be read statically; refused")
                if (named_module, named_attribute) not in ALLOWED_GLOBALS:
                    raise _refuse(named_module, named_attribute)
                stack.append((named_module, named_attribute))
            elif name in _STRING_OPCODES:
                stack.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
            elif name in _MEMO_PUTS:
                if not stack:
                    raise InvalidUploadError("the checkpoint's pickle is malformed (memo)")
                memo[len(memo) if name == "MEMOIZE" else int(arg)] = stack[-1]  # type: ignore[arg-type]
            elif name in _MEMO_GETS:
                if int(arg) not in memo:  # type: ignore[arg-type]
                    raise InvalidUploadError("the checkpoint's pickle is malformed (memo)")
                stack.append(memo[int(arg)])  # type: ignore[arg-type]
            elif name == "DUP":
                stack.append(_pop(stack, 1)[0])
                stack.append(stack[-1])
            else:
                if name == "REDUCE" and len(stack) >= 2 and stack[-2] == _TENSOR_REBUILDER:
                    tensors += 1
                to_mark, popped, pushed = _EFFECTS[name]
                if name == "POP" and stack and stack[-1] is _MARK:
                    _pop_to_mark(stack)  # POP of a MARK takes only the MARK
                else:
                    if to_mark:
                        _pop_to_mark(stack)
                    _pop(stack, popped)
                stack.extend(pushed)
    except (ValueError, IndexError) as error:
        raise InvalidUploadError(f"the checkpoint's pickle is malformed or truncated "
                                 f"({error})") from error
    return tensors


def _read_bounded(archive: zipfile.ZipFile, entry: zipfile.ZipInfo) -> bytes:
    """An entry's bytes, inflated a chunk at a time and counted as they come: never more
    than ``MAX_PICKLE_BYTES``, nor more than ``MAX_COMPRESSION_RATIO`` times what they
    take in the file (whatever sizes the zip claims).

    Raises:
        InvalidUploadError: past either bound.
    """
    if entry.flag_bits & _ENCRYPTED:
        raise InvalidUploadError("the checkpoint's zip is encrypted; save it again with "
                                 "torch.save, which never encrypts")
    if entry.compress_type not in _ACCEPTED_COMPRESSION:
        raise InvalidUploadError(
            f"the checkpoint's zip compresses data.pkl with method {entry.compress_type}; "
            "torch.save stores it (method 0), and deflate (8) is accepted too")
    chunks, size = [], 0
    allowed = min(MAX_PICKLE_BYTES,
                  max(MIN_RATIO_CHECKED_BYTES, entry.compress_size * MAX_COMPRESSION_RATIO))
    with archive.open(entry) as stream:
        while chunk := stream.read(_CHUNK):
            size += len(chunk)
            if size > allowed:
                if size > MAX_PICKLE_BYTES:
                    raise InvalidUploadError(
                        f"the checkpoint's data.pkl is larger than "
                        f"{MAX_PICKLE_BYTES // 2**20} MiB; a state dict's pickle is far "
                        "smaller (upload the weights as safetensors)")
                raise InvalidUploadError(
                    "the checkpoint's data.pkl inflates more than "
                    f"{MAX_COMPRESSION_RATIO} times its compressed size, which no state "
                    "dict does; refused as a decompression bomb")
            chunks.append(chunk)
    return b"".join(chunks)


def _central_directory_entries(path: Path) -> int:
    """How many entries the zip's end record announces (read before ``ZipFile`` lists
    them all into memory), from its zip64 record when it has one.

    Raises:
        InvalidUploadError: no end record, or more entries than ``MAX_ZIP_ENTRIES``.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        start = max(0, size - _END_RECORD_SEARCH)
        handle.seek(start)
        tail = handle.read()
        at = tail.rfind(_END_RECORD_MAGIC)
        if at < 0 or len(tail) - at < 22:
            raise InvalidUploadError("the zip file is damaged or truncated (no end record); "
                                     "upload it again")
        entries, directory_size = struct.unpack("<HI", tail[at + 10:at + 16])
        locator = tail[at - 20:at] if at >= 20 else b""
        if locator[:4] == _ZIP64_LOCATOR_MAGIC:
            (record_at,) = struct.unpack("<Q", locator[8:16])
            handle.seek(record_at)
            record = handle.read(56)
            if record[:4] != _ZIP64_END_RECORD_MAGIC or len(record) < 56:
                raise InvalidUploadError("the zip file is damaged (zip64 end record)")
            entries, directory_size = struct.unpack("<QQ", record[32:48])
    if entries > MAX_ZIP_ENTRIES or directory_size > MAX_ZIP_ENTRIES * 1024:
        raise InvalidUploadError(f"the zip holds more than {MAX_ZIP_ENTRIES} entries; a "
                                 "state dict saved by torch.save has one per tensor storage")
    return int(entries)


def _inspect_torch_zip(path: Path) -> WeightsInfo:
    _central_directory_entries(path)
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [info for info in archive.infolist()
                       if info.filename == "data.pkl" or info.filename.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise InvalidUploadError(
                    f"a torch.save checkpoint holds exactly one data.pkl, this zip holds "
                    f"{len(pickles)}; save the state dict with torch.save or as safetensors")
            data = _read_bounded(archive, pickles[0])
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
            NotImplementedError, RuntimeError, zlib.error) as error:
        raise InvalidUploadError(f"the zip file is damaged, truncated or of a kind torch.save "
                                 f"does not write ({type(error).__name__}: {error}); "
                                 "upload it again") from error
    tensors = scan_pickle(data)
    if tensors == 0:
        raise InvalidUploadError("the checkpoint holds no tensors; upload model.state_dict()")
    return WeightsInfo(format="torch_state_dict", tensor_count=tensors)


def _inspect_safetensors(path: Path) -> WeightsInfo:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            count = len(list(handle.keys()))
    except (SafetensorError, OSError, ValueError) as error:
        raise InvalidUploadError(f"the safetensors file is damaged or truncated ({error}); "
                                 "upload it again") from error
    if count == 0:
        raise InvalidUploadError("the safetensors file holds no tensors")
    return WeightsInfo(format="safetensors", tensor_count=count)


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    header_length = int.from_bytes(head[:8], "little")
    return 0 < header_length <= size - 8 and head[8:9] == b"{"


def inspect_weights(path: Path) -> WeightsInfo:
    """Decide whether an uploaded file is safe, loadable weights, and which kind.

    Args:
        path: the uploaded file (not yet kept).

    Returns:
        Its format and tensor count.

    Raises:
        UnsafeCheckpointError: a pickle that could run code (never loaded).
        InvalidUploadError: not safetensors nor a torch state dict, or damaged.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(9)
    if head.startswith(_ZIP_MAGIC):
        return _inspect_torch_zip(path)
    if _looks_like_safetensors(head, size):
        return _inspect_safetensors(path)
    if head.startswith(_PICKLE_PROTOCOL):
        raise UnsafeCheckpointError(
            "this is a bare pickle (the legacy torch.save format), which can run code when "
            "loaded; re-save it with a current torch.save or as safetensors")
    raise InvalidUploadError("the file is neither safetensors nor a torch.save zip of a state "
                             "dict; convert it with safetensors.torch.save_file(state_dict, path)")
