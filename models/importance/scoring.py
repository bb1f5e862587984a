"""One entry point for every scorer: ``score(model, splits, method, **settings)``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from core.errors import InvalidSpecError
from models.datasets import DataSplits

from . import attention, magnitude, pls
from .base import METHODS, ImportanceScores, check_settings
from .targets import ScoringTargets, resolve_targets

Scorer = Callable[[nn.Module, DataSplits, ScoringTargets, dict[str, Any]],
                  tuple[dict[str, Tensor], dict[str, float], dict[str, float]]]

_SCORERS: dict[str, tuple[Scorer, dict[str, Any]]] = {
    "attention": (attention.attention_scores, attention.DEFAULT_SETTINGS),
    "pls": (pls.pls_scores, pls.DEFAULT_SETTINGS),
    "magnitude": (magnitude.magnitude_scores, magnitude.MAGNITUDE_SETTINGS),
    "taylor": (magnitude.taylor_scores, magnitude.TAYLOR_SETTINGS),
}


def _scorer(method: str) -> tuple[Scorer, dict[str, Any]]:
    if method not in _SCORERS:
        raise InvalidSpecError(f"unknown importance method {method!r}; known: {', '.join(METHODS)}")
    return _SCORERS[method]


def default_settings(method: str) -> dict[str, Any]:
    """The settings a method uses when given none.

    Raises:
        InvalidSpecError: unknown method.
    """
    return dict(_scorer(method)[1])


def resolve_settings(method: str, settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with the method's defaults filled in (the key the cache uses).

    Raises:
        InvalidSpecError: unknown method or a setting it does not take.
    """
    return check_settings(method, settings, _scorer(method)[1])


def score(model: nn.Module, splits: DataSplits, method: str,
          groups: Sequence[Any] | None = None, blocks: Sequence[Any] | None = None,
          **settings: Any) -> ImportanceScores:
    """Score every channel, prunable group and removable block of ``model``.

    The model is left as it was: same weights, same outputs, same train/eval
    modes, same ``requires_grad`` flags and gradients.

    Args:
        model: the (trained, unpruned) network, on the device to score on.
        splits: the dataset; scorers read only its calibration split.
        method: ``attention``, ``pls``, ``magnitude`` or ``taylor``.
        groups: ``GroupInfo`` objects or group names; all of
            ``prunable_groups(model, splits.example_input())`` when None.
        blocks: ``BlockInfo`` objects or block names; all of
            ``removable_blocks(model, splits.example_input())`` when None.
        **settings: the method's settings (see each module's ``DEFAULT_SETTINGS``).

    Returns:
        The scores, with the resolved settings and the time taken.

    Raises:
        InvalidSpecError: unknown method or setting, unknown group or block name,
            empty calibration split.
    """
    scorer, _ = _scorer(method)
    resolved = resolve_settings(method, settings)
    started = time.perf_counter()
    targets = resolve_targets(model, splits.example_input(), groups, blocks)
    channel, group, block = scorer(model, splits, targets, resolved)
    channel = {name: values.detach().cpu() for name, values in channel.items()}
    seconds = time.perf_counter() - started
    return ImportanceScores(method, channel, group, block, seconds, resolved)
