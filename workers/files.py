"""Where one job's files live on the shared artifact storage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: Artifact kind (``?format=`` of the download route) -> file name.
CHECKPOINT_FILES = {
    "safetensors": "pruned.safetensors",
    "onnx": "pruned.onnx",
    "pt2": "pruned.pt2",
    "torchscript": "pruned.torchscript.pt",
}


@dataclass(frozen=True)
class JobFiles:
    """Paths of one job's files; every writer writes under a temporary name first.

    Attributes:
        folder: ``<artifact_dir>/<job id>``.
        scores: the importance-score cache, shared by all jobs.
    """

    folder: Path
    scores: Path

    @classmethod
    def for_job(cls, artifact_dir: Path, home: Path, job_id: str) -> JobFiles:
        folder = Path(artifact_dir) / job_id
        folder.mkdir(parents=True, exist_ok=True)
        return cls(folder=folder, scores=Path(home) / "scores")

    @property
    def baseline(self) -> Path:
        """The unpruned, trained weights every search worker starts from."""
        return self.folder / "baseline.safetensors"

    def checkpoint(self, kind: str) -> Path:
        return self.folder / CHECKPOINT_FILES[kind]
