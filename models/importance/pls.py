"""Partial Least Squares scores (Jordao, Lie, Schwartz, IEEE JSTSP 2020).

Features are global-average-pooled outputs on the calibration split:

* for every member convolution of a prunable group, its output after BatchNorm
  (one feature per channel);
* for every removable block, what the block adds to its input,
  ``pool(block(x)) - pool(x)``. Dropping a block replaces it by the identity,
  so this is exactly what dropping it removes; the block's raw output would
  repeat the information of the block before it (a block whose branch is zero
  outputs its input unchanged) and could not single out a useless block.

Each layer's features are regressed on the one-hot labels with
``sklearn.cross_decomposition.PLSRegression``; the Variable Importance in
Projection (VIP) of every feature is its score, so a channel's score is its
VIP (averaged over the member layers of a group that couples several convs).

Layer and block scores follow the paper's two stages: VIP within one layer is
normalised (its mean square is always 1), so it cannot compare layers. Each
layer is therefore first projected to its ``components`` PLS latent features,
the latent features of all layers are concatenated, a second PLS is fitted on
them, and a layer's score is the mean VIP of its latent features. Groups
compete with groups, blocks with blocks.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from models.datasets import DataSplits

from .base import calibration_batches
from .targets import ScoringTargets, eval_mode

if TYPE_CHECKING:
    from sklearn.cross_decomposition import PLSRegression

DEFAULT_SETTINGS: dict[str, Any] = {
    "components": 4,
    "batch_size": 64,
    "max_samples": 2048,
}

# Features whose spread is below this are treated as constant (carry no information).
_CONSTANT = 1e-8


def variable_importance_in_projection(pls: PLSRegression) -> np.ndarray:
    """VIP of every input feature of a fitted PLS regression.

    VIP_j = sqrt(p * sum_k (w_jk / ||w_k||)^2 * s_k / sum_k s_k), with
    s = diag(T'T Q'Q), T = ``x_scores_``, W = ``x_weights_``, Q = ``y_loadings_``
    and p the number of features.

    Args:
        pls: a fitted ``PLSRegression``.

    Returns:
        One non-negative score per feature; all zeros when the model explains nothing.
    """
    scores = pls.x_scores_
    weights = pls.x_weights_
    loadings = pls.y_loadings_
    features = weights.shape[0]
    explained = np.diag(scores.T @ scores @ loadings.T @ loadings)
    total = explained.sum()
    norms = np.linalg.norm(weights, axis=0, keepdims=True)
    if total <= 0 or not np.isfinite(total):
        return np.zeros(features)
    normalized = np.divide(weights, norms, out=np.zeros_like(weights), where=norms > 0) ** 2
    return np.sqrt(features * (normalized @ explained) / total)


def fit_pls(features: np.ndarray, targets: np.ndarray,
            components: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit PLS on one layer's features; return (VIP per feature, latent features).

    Constant features get VIP 0; a layer whose features are all constant gets
    all-zero VIP and all-zero latent features. ``components`` is capped by the
    number of samples and of non-constant features.
    """
    samples, count = features.shape
    varying = features.std(axis=0) > _CONSTANT
    usable = int(varying.sum())
    if usable == 0 or samples < 2:
        return np.zeros(count), np.zeros((samples, 1))
    kept = min(components, usable, samples - 1)
    # Imported here: scikit-learn takes seconds to import, and only PLS scoring needs it.
    from sklearn.cross_decomposition import PLSRegression

    pls = PLSRegression(n_components=kept)
    with warnings.catch_warnings():
        # Fewer informative directions than components: sklearn warns and stops early.
        warnings.simplefilter("ignore", UserWarning)
        pls.fit(features[:, varying], targets)
    vip = np.zeros(count)
    vip[varying] = variable_importance_in_projection(pls)
    return np.nan_to_num(vip), np.nan_to_num(pls.x_scores_)


def _one_hot(labels: np.ndarray) -> np.ndarray:
    classes = np.unique(labels)
    return (labels[:, None] == classes[None, :]).astype(np.float64)


class _PooledFeatures:
    """Forward hooks that record pooled layer outputs and pooled block contributions."""

    def __init__(self, layers: dict[str, nn.Module], blocks: dict[str, nn.Module]) -> None:
        self.layers = layers
        self.blocks = blocks
        self.values: dict[str, list[Tensor]] = {name: [] for name in (*layers, *blocks)}
        self._handles: list[Any] = []

    def __enter__(self) -> _PooledFeatures:
        for name, module in self.layers.items():
            self._handles.append(module.register_forward_hook(self._layer_hook(name)))
        for name, module in self.blocks.items():
            self._handles.append(module.register_forward_hook(self._block_hook(name)))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _layer_hook(self, name: str):  # type: ignore[no-untyped-def]
        def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            # Pooled right away: a following in-place ReLU would change ``output``.
            self.values[name].append(output.flatten(2).mean(dim=2).double().cpu())

        return record

    def _block_hook(self, name: str):  # type: ignore[no-untyped-def]
        def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            added = output.flatten(2).mean(dim=2) - inputs[0].flatten(2).mean(dim=2)
            self.values[name].append(added.double().cpu())

        return record

    def matrix(self, name: str) -> np.ndarray:
        return torch.cat(self.values[name]).numpy()


def _collect(model: nn.Module, splits: DataSplits, targets: ScoringTargets,
             settings: dict[str, Any]) -> tuple[_PooledFeatures, np.ndarray]:
    device = next(model.parameters()).device
    hooks = _PooledFeatures(targets.observed_layers(), targets.blocks)
    labels: list[Tensor] = []
    seen = 0
    with eval_mode(model), hooks, torch.no_grad():
        for images, batch_labels in calibration_batches(splits, settings["batch_size"]):
            if seen >= settings["max_samples"]:
                break
            model(images.to(device))
            labels.append(batch_labels.cpu())  # CUDA-resident splits give CUDA labels
            seen += images.shape[0]
    return hooks, torch.cat(labels).numpy()


def _joint_scores(latents: dict[str, np.ndarray], targets: np.ndarray,
                  components: int) -> dict[str, float]:
    """Second stage: one PLS over every unit's latent features; unit score = mean VIP of its own."""
    if not latents:
        return {}
    names = list(latents)
    stacked = np.concatenate([latents[name] for name in names], axis=1)
    vip, _ = fit_pls(stacked, targets, components)
    scores: dict[str, float] = {}
    start = 0
    for name in names:
        width = latents[name].shape[1]
        scores[name] = float(vip[start:start + width].mean())
        start += width
    return scores


def pls_scores(model: nn.Module, splits: DataSplits, targets: ScoringTargets,
               settings: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, float],
                                                  dict[str, float]]:
    """VIP scores of channels, groups and blocks from PLS on pooled calibration features.

    Args:
        model: the network; unchanged (run in eval mode, modes restored).
        splits: the dataset; only its calibration split is used.
        targets: the groups and blocks to score.
        settings: ``DEFAULT_SETTINGS`` with the caller's overrides.

    Returns:
        (channel scores, group scores, block scores).
    """
    hooks, labels = _collect(model, splits, targets, settings)
    onehot = _one_hot(labels)
    components = int(settings["components"])

    layer_vip: dict[str, np.ndarray] = {}
    layer_latent: dict[str, np.ndarray] = {}
    for name in hooks.layers:
        layer_vip[name], layer_latent[name] = fit_pls(hooks.matrix(name), onehot, components)

    channel: dict[str, Tensor] = {}
    group_latents: dict[str, np.ndarray] = {}
    for name, layers in targets.groups.items():
        total = torch.zeros(layers.channels, dtype=torch.float64)
        counts = torch.zeros(layers.channels, dtype=torch.float64)
        for member in layers.members:
            values = torch.from_numpy(layer_vip[member.observed_name])[member.member_channels]
            total.index_add_(0, member.root_channels, values)
            counts.index_add_(0, member.root_channels, torch.ones_like(values))
        channel[name] = (total / counts.clamp(min=1)).float()
        group_latents[name] = np.concatenate(
            [layer_latent[member.observed_name] for member in layers.members], axis=1)

    block_latents = {name: fit_pls(hooks.matrix(name), onehot, components)[1]
                     for name in targets.blocks}
    group = _joint_scores(group_latents, onehot, components)
    block = _joint_scores(block_latents, onehot, components)
    return channel, group, block
