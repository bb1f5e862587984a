"""What a re-rank trained, kept for the final fine-tune to go on from.

The re-rank (``search.rerank``) fine-tunes each of its plans with two seeds for
``rerank_factor`` times a trial's fine-tune; that training is counted in the job's
compute and would otherwise be thrown away. The weights of each plan's better seed
(by the validation accuracy the re-rank records) are kept here, one safetensors file
per plan, and the final fine-tune of a plan that has them starts from them instead
of from the freshly pruned network (``workers/finalize.py``): the delivered model
gets the re-rank's steps on top of the final ones.

Files, not tensors in memory: up to ``fidelity.rerank`` plans (10 at most) of any
network, in the finalising worker's scratch folder, gone with it. A worker that
takes over a finalising job has no files and fine-tunes from the pruned network,
as before.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import safetensors.torch
from torch import nn

__all__ = ["RerankWeights"]

logger = logging.getLogger(__name__)


class RerankWeights:
    """Per plan (``core.trial.plan_key``), the weights of its best re-rank seed.

    Args:
        folder: where the files go (created if missing); the caller removes it.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._accuracies: dict[str, float] = {}

    def _path(self, key: str) -> Path:
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"

    def offer(self, key: str, model: nn.Module, accuracy: float) -> None:
        """Keep ``model``'s weights for plan ``key`` if no seed of it scored higher."""
        if accuracy <= self._accuracies.get(key, float("-inf")):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().to("cpu").contiguous()
                 for name, tensor in model.state_dict().items()}
        safetensors.torch.save_file(state, str(self._path(key)))
        self._accuracies[key] = accuracy

    def accuracy(self, key: str) -> float | None:
        """The validation accuracy of the weights kept for plan ``key`` (None: none kept)."""
        return self._accuracies.get(key)

    def restore(self, key: str, model: nn.Module) -> bool:
        """Load the weights kept for plan ``key`` into ``model`` (its pruned network).

        Returns:
            Whether ``model`` now holds them: False when none were kept, or when they do
            not fit ``model`` (logged; ``model`` is then left as it was).
        """
        if key not in self._accuracies:
            return False
        state = safetensors.torch.load_file(str(self._path(key)))
        own = model.state_dict()
        if set(state) != set(own) or any(state[name].shape != own[name].shape for name in own):
            logger.warning("the re-rank's weights do not fit the pruned network of the same "
                           "plan; fine-tuning it from its pruned weights")
            return False
        model.load_state_dict(state)
        return True
