"""Samplers and trial pruners from the job spec, all seeded."""

from __future__ import annotations

import warnings
from typing import Literal

import optuna
from optuna.pruners import (
    BasePruner,
    HyperbandPruner,
    MedianPruner,
    NopPruner,
    SuccessiveHalvingPruner,
)
from optuna.samplers import BaseSampler, GPSampler, NSGAIISampler, RandomSampler, TPESampler

from core.spec import JobSpec


def make_sampler(spec: JobSpec, n_startup_trials: int | None = None) -> BaseSampler:
    """The sampler named by ``search.sampler``.

    TPE is multivariate with the constant liar, so parallel workers do not all
    propose the same point while their trials are running, and grouped: the space
    is conditional (a dropped block's groups are not sampled, ``search.space``),
    and ``group`` lets it model each set of parameters that occur together instead
    of sampling everything outside their intersection independently. Warm-start
    trials are enqueued and count towards the start-up trials.
    """
    name, seed = spec.search.sampler, spec.seed
    startup = n_startup_trials if n_startup_trials is not None else _startup_trials(spec)
    if name == "tpe":
        with warnings.catch_warnings():  # ``group`` is still "experimental" in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                              n_startup_trials=startup)
    if name == "gp":
        return GPSampler(seed=seed, n_startup_trials=startup)
    if name == "nsga2":
        return NSGAIISampler(seed=seed, population_size=max(4, min(50, spec.search.n_trials // 4)))
    return RandomSampler(seed=seed)


def _startup_trials(spec: JobSpec) -> int:
    # Optuna's default of 10 random trials is a quarter of a small budget; the
    # warm-start plans already cover the good regions, so start modelling early.
    return max(2, min(10, spec.search.n_trials // 5))


def make_pruner(spec: JobSpec) -> BasePruner:
    """The trial pruner named by ``search.trial_pruner`` (``none`` never stops a trial),
    or with ``search.fidelity`` multi, successive halving: rung 0 is the probe
    (``search.objective.PROBE_STEP``), where only the best ``1 / reduction_factor`` of
    the probed plans go on to their fine-tune, and it halves again over the epochs."""
    if spec.search.fidelity.mode == "multi":
        return SuccessiveHalvingPruner(min_resource=1,
                                       reduction_factor=spec.search.fidelity.reduction_factor,
                                       min_early_stopping_rate=0)
    name = spec.search.trial_pruner
    epochs = max(1, spec.fine_tune.trial_epochs)
    if name == "median":
        return MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if name == "hyperband":
        # A trial of trial_steps reports once per pass over the data: how many passes
        # that is depends on the dataset, so Optuna reads it off the first trial.
        return HyperbandPruner(min_resource=1, max_resource=epochs
                               if spec.fine_tune.trial_steps is None else "auto")
    return NopPruner()


def directions(spec: JobSpec) -> list[Literal["minimize", "maximize"]]:
    """Study directions: accuracy up; in pareto mode latency (and memory) down."""
    if spec.objective.mode != "pareto":
        return ["maximize"]
    extra: list[Literal["minimize", "maximize"]] = (
        ["minimize", "minimize"] if spec.objective.pareto_memory else ["minimize"])
    return ["maximize", *extra]


__all__ = ["make_sampler", "make_pruner", "directions", "optuna"]
