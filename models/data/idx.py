"""The IDX format of MNIST and Fashion-MNIST: read from local files, never downloaded.

An IDX file is two zero bytes, a type code (0x08: unsigned bytes), the number of
dimensions, one big-endian 32-bit size per dimension, then the values. Images
are ``(count, rows, columns)``, labels ``(count,)``. Each file may be gzipped.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from core.errors import DatasetError

__all__ = ["IDX_FILES", "find_idx_file", "read_idx", "read_idx_split"]

#: The four files of an MNIST-style dataset, by split: (images, labels), without ``.gz``.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_UNSIGNED_BYTE = 0x08


def find_idx_file(folder: Path, stem: str) -> Path:
    """``folder/stem.gz`` or ``folder/stem`` (also ``stem.idx3-ubyte`` spellings with a dot).

    Raises:
        DatasetError: neither exists.
    """
    candidates = [stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz",
                  stem.replace("-idx", ".idx")]
    for name in candidates:
        if (folder / name).is_file():
            return folder / name
    raise DatasetError(f"{stem}[.gz] is missing from {str(folder)!r}; expected the four IDX "
                       f"files {', '.join(n for pair in IDX_FILES.values() for n in pair)} "
                       "(gzipped or not)")


def read_idx(path: Path) -> np.ndarray:
    """One IDX file as a uint8 array of the shape its header gives.

    Raises:
        DatasetError: not an IDX file of unsigned bytes, or truncated.
    """
    try:
        with path.open("rb") as handle:
            gzipped = handle.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gzipped else path.open("rb")) as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise DatasetError(f"cannot read {str(path)!r}: {error}") from error
    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise DatasetError(f"{str(path)!r} is not an IDX file (bad magic number)")
    kind, dimensions = data[2], data[3]
    if kind != _UNSIGNED_BYTE:
        raise DatasetError(f"{str(path)!r} holds IDX type 0x{kind:02x}; only unsigned bytes "
                           "(0x08, as in MNIST) are read")
    header = 4 + 4 * dimensions
    if dimensions == 0 or len(data) < header:
        raise DatasetError(f"{str(path)!r} has a truncated IDX header")
    shape = struct.unpack(f">{dimensions}I", data[4:header])
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DatasetError(f"{str(path)!r} should hold {expected} values for shape "
                           f"{list(shape)}, holds {len(data) - header} (truncated?)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(count, rows, columns)`` and labels ``(count,)`` of ``train`` or ``test``.

    Raises:
        DatasetError: a file is missing or malformed, or the two counts disagree.
    """
    images_stem, labels_stem = IDX_FILES[split]
    images = read_idx(find_idx_file(folder, images_stem))
    labels = read_idx(find_idx_file(folder, labels_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"IDX {split} files in {str(folder)!r} disagree: images "
                           f"{list(images.shape)}, labels {list(labels.shape)}")
    return images, labels
