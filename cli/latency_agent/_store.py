"""The models an agent holds: ONNX files on disk under their sha256, the fewest recently
used dropped first, never more than ``max_models`` of them."""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

__all__ = ["ModelStore"]


class ModelStore:
    """ONNX files by sha256 in ``folder``, at most ``max_models`` (least recently used go).

    A timing holds the device lock while it reads paths from here, and a file is added
    under that lock too, so no file is dropped while it is being timed.
    """

    def __init__(self, folder: Path, max_models: int) -> None:
        self.folder = folder
        self.max_models = max_models
        self._paths: OrderedDict[str, Path] = OrderedDict()
        self._guard = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)

    def __contains__(self, digest: str) -> bool:
        with self._guard:
            return digest in self._paths

    def missing(self, digests: list[str]) -> list[str]:
        """Those of ``digests`` not held here (in order, without repeats)."""
        with self._guard:
            return [digest for digest in dict.fromkeys(digests) if digest not in self._paths]

    def path(self, digest: str) -> Path | None:
        """The file of ``digest`` (now the most recently used), or None."""
        with self._guard:
            found = self._paths.get(digest)
            if found is not None:
                self._paths.move_to_end(digest)
            return found

    def temporary_path(self) -> Path:
        """A fresh file in the store's folder for an upload in progress."""
        handle, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=self.folder)
        os.close(handle)
        return Path(name)

    def add(self, digest: str, uploaded: Path) -> None:
        """Keep ``uploaded`` (a checked file from ``temporary_path``) as ``digest``."""
        destination = self.folder / f"{digest}.onnx"
        os.replace(uploaded, destination)
        with self._guard:
            self._paths[digest] = destination
            self._paths.move_to_end(digest)
            while len(self._paths) > self.max_models:
                _, dropped = self._paths.popitem(last=False)
                dropped.unlink(missing_ok=True)
