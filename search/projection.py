"""Budget-projected sampling: a sampled plan that breaks a counted limit is scaled onto it.

The sampler proposes widths without knowing the limits, and most of a per-layer
space lies far from any budget (uniform keep counts of a ResNet-50 land near 0.2
of its MACs, and many break a tight limit outright). Instead of recording such a
plan as infeasible, the objective scales it onto the limits, as seeding sizes
its plans (``search.fitting``): every surviving group's width is multiplied by
one factor, bisected as the largest whose really pruned network meets every
limit on FLOPs, parameters and memory (``search.fitting.PlanFit``: counted
exactly, memory aimed ``MEASURED_MARGIN`` under), on the space's grid (multiples
of ``round_to`` or the full width, never under a group's floor); the blocks the
sampler dropped stay dropped. Latency is not projected: a bisection of timings
costs more than a trial's fine-tune, and the side-by-side timing of the trial
still judges it.

What Optuna learns: a trial's parameters cannot change after they are suggested,
so the sampler keeps the parameters it proposed and learns the value of their
projection (the objective becomes a function of the sampled point through a
deterministic repair, which TPE and GP model like any other). The trial's record
(``core.trial.TrialRecord``) keeps both: ``plan`` is the projected plan the trial
measured and fine-tuned, ``sampled_plan`` the proposal, ``projected`` says so.
Enqueuing the projected parameters as a new trial instead would spend a second
trial on every projection.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from models.plan import PrunePlan
from search.constraints import Limit
from search.fitting import PlanFit
from search.space import SearchSpace
from search.warm_start import largest_fitting

__all__ = ["PROJECTED_METRICS", "PROJECTION_STEPS", "PlanProjection"]

#: Limits on these are projected onto; latency is left to the trial's timing.
PROJECTED_METRICS = frozenset({"flops", "params", "memory_mb"})
#: Bisection steps on the width factor (widths are on a grid of round_to steps).
PROJECTION_STEPS = 10


class PlanProjection:
    """Scales plans that break a projected limit onto it (see the module docstring).

    Args:
        model: the unpruned network (never modified).
        example_input: a batch of its input shape.
        limits: the job's active limits; those on ``PROJECTED_METRICS`` are projected.
        space: the search space, whose grid the projected widths stay on.
    """

    def __init__(self, model: nn.Module, example_input: Tensor, limits: Sequence[Limit],
                 space: SearchSpace, steps: int = PROJECTION_STEPS) -> None:
        projected = [limit for limit in limits if limit.metric in PROJECTED_METRICS]
        self.fits = PlanFit(model, example_input, projected) if projected else None
        self.space = space
        self.steps = steps

    def __call__(self, plan: PrunePlan) -> PrunePlan:
        """``plan`` itself when it meets the projected limits (or there are none, or even
        its narrowest scaling misses them), else its widest scaling that meets them."""
        fits = self.fits
        if fits is None or fits(plan):
            return plan
        projected = largest_fitting(lambda factor: self.space.scaled(plan, factor), fits,
                                    self.steps)
        return plan if projected is None else projected
