"""Small job specs as plain JSON, for tests and benchmarks to submit."""

from __future__ import annotations

from typing import Any


def merged(spec: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with ``overrides``: a dict merges into the section it names, anything
    else replaces the key."""
    result = dict(spec)
    for key, value in overrides.items():
        result[key] = {**result.get(key, {}), **value} if isinstance(value, dict) else value
    return result


def spec_json(**overrides: Any) -> dict[str, Any]:
    """A small valid job spec for the API (never run); top-level keys are replaced."""
    spec: dict[str, Any] = {
        "name": "resnet20-digits",
        "model": {"arch": "cifar_resnet20", "num_classes": 10, "weights": None},
        "dataset": {"name": "digits", "image_size": 16},
        "objective": {"mode": "constrained", "constraints": {"max_latency_ratio": 0.5}},
        "search": {"n_trials": 4},
    }
    spec.update(overrides)
    return spec


def tiny_spec(**overrides: Any) -> dict[str, Any]:
    """A job a worker runs in seconds: ResNet-20 on 16x16 digits, a handful of trials
    (sections in ``overrides`` merge, see :func:`merged`)."""
    return merged({
        "name": "worker-test",
        "model": {"arch": "cifar_resnet20"},
        "dataset": {"name": "digits", "image_size": 16},
        "objective": {"constraints": {"max_flops_ratio": 0.5}},
        "latency": {"device": "cpu", "runs": 5, "warmup": 1},
        "search": {"n_trials": 4, "warm_start": ["pls"], "round_to": 4},
        "fine_tune": {"trial_epochs": 1, "final_epochs": 1, "baseline_epochs": 2},
    }, overrides)


def chaos_spec(**overrides: Any) -> dict[str, Any]:
    """A job of a minute or so: :func:`tiny_spec` named ``chaos``, FLOPs capped at 60%."""
    return tiny_spec(**{"name": "chaos",
                        "objective": {"constraints": {"max_flops_ratio": 0.6}}, **overrides})
