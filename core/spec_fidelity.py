"""``search.fidelity``: how much each trial spends on judging its plan.

``single``: every feasible plan gets the trial's fine-tune (``fine_tune.trial_epochs``
or ``trial_steps``). ``multi``: every feasible plan is first screened by the
adaptive-BatchNorm probe (EagleEye: BatchNorm statistics re-estimated, no
training) and Optuna's successive halving lets only the best ``1 /
reduction_factor`` of the probed plans go on to the short fine-tune (and halves
them again over its epochs; ``screen: none`` skips the probe, and every feasible
plan is fine-tuned); then the ``rerank`` best plans are fine-tuned
``rerank_factor`` times longer with two seeds, and the best of those is the one
finalised. Torch-free; ``core.spec`` uses ``FidelitySpec``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["FidelitySpec", "fidelity_problem"]


class FidelitySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["single", "multi"] = Field(
        default="single",
        description="single: every feasible plan gets the trial fine-tune; multi: the "
                    "adaptive-BatchNorm probe screens every plan and successive halving "
                    "gives the short fine-tune only to the most promising, then the best "
                    "few are re-ranked by a longer fine-tune with two seeds")
    screen: Literal["probe", "none"] = Field(
        default="probe",
        description="multi: probe: the adaptive-BatchNorm probe screens every feasible plan "
                    "before its fine-tune, so the same steps see more plans; none: every "
                    "feasible plan gets the short fine-tune (see bench/rerank_signal.py for "
                    "how well each signal ranks plans)")
    reduction_factor: int = Field(
        default=3, ge=2, le=10,
        description="multi: 1 / this share of the probed plans goes on to the fine-tune")
    rerank: int = Field(default=3, ge=0, le=10,
                        description="multi: how many of the best plans are re-ranked")
    rerank_factor: float = Field(
        default=3.0, ge=1, le=100,
        description="multi: a re-rank fine-tune is this many times the trial fine-tune")


def fidelity_problem(mode: str, trial_pruner: str, trial_budget: dict[str, Any],
                     fidelity: FidelitySpec) -> str | None:
    """Why a multi-fidelity search cannot run with these settings, or None when it can.

    Args:
        mode: ``objective.mode``.
        trial_pruner: ``search.trial_pruner``.
        trial_budget: ``FineTuneSpec.trial_budget()``.
        fidelity: ``search.fidelity``.
    """
    if fidelity.mode != "multi":
        return None
    if mode == "pareto":
        return ("search.fidelity multi ranks plans by one score; a pareto job has several "
                "objectives (use mode constrained or weighted, or fidelity single)")
    if trial_pruner != "none":
        return ("search.fidelity multi stops trials by successive halving; leave "
                "search.trial_pruner at none")
    if not trial_budget.get("epochs") and not trial_budget.get("steps"):
        return ("search.fidelity multi fine-tunes the most promising plans; give "
                "fine_tune.trial_epochs >= 1 or trial_steps")
    return None
