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

Widening: when the objective rewards accuracy alone (``constrained`` mode) and every
limit is counted (FLOPs, parameters, memory: none timed), a plan *under* the limits
is scaled up onto them the same way (the widest scaling that still meets them; a
width never past the group's own). A plan at 35% of the FLOPs under a 50% limit
gives up accuracy for nothing the job asked for, and comparing plans of unequal
size ranks their sizes more than their shapes (in the Fashion-MNIST benchmark half
the sampled plans under a 50% limit used less than 34% of the FLOPs). EagleEye, too,
compares only candidates within a small tolerance of the target FLOPs. With a
latency limit, or costs weighed into the objective (``weighted``, ``pareto``), a
smaller plan can be worth it, and nothing is widened.

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
    """Scales plans onto the projected limits (see the module docstring).

    Args:
        model: the unpruned network (never modified).
        example_input: a batch of its input shape.
        limits: the job's active limits; those on ``PROJECTED_METRICS`` are projected.
        space: the search space, whose grid the projected widths stay on.
        accuracy_only: the objective rewards accuracy alone (``constrained`` mode): plans
            under the limits are widened onto them when every limit is projected.
    """

    def __init__(self, model: nn.Module, example_input: Tensor, limits: Sequence[Limit],
                 space: SearchSpace, steps: int = PROJECTION_STEPS,
                 accuracy_only: bool = False) -> None:
        projected = [limit for limit in limits if limit.metric in PROJECTED_METRICS]
        self.fits = PlanFit(model, example_input, projected) if projected else None
        self.space = space
        self.steps = steps
        #: Whether plans under the limits are widened onto them.
        self.widens = accuracy_only and bool(projected) and len(projected) == len(limits)

    def __call__(self, plan: PrunePlan) -> PrunePlan:
        """``plan`` itself when it meets the projected limits and is not widened (or there
        are no such limits, or even its narrowest scaling misses them), else its widest
        scaling that meets them."""
        fits = self.fits
        if fits is None:
            return plan
        if fits(plan):
            return self._widened(plan) if self.widens else plan
        projected = largest_fitting(lambda factor: self.space.scaled(plan, factor), fits,
                                    self.steps)
        return plan if projected is None else projected

    def _widened(self, plan: PrunePlan) -> PrunePlan:
        """The widest scaling of ``plan`` (which fits) that still fits; ``plan`` itself
        when no wider one does."""
        assert self.fits is not None
        live = self.space.live_groups(plan.drop_blocks)
        # The factor that takes the narrowest group (relative to its own width) to full
        # width: every group is at full width there (widths are capped at their own).
        top = max((group.channels / max(1, plan.keep.get(group.name, group.channels))
                   for group in live), default=1.0)
        if top <= 1.0:
            return plan
        widest = largest_fitting(
            lambda knob: self.space.scaled(plan, max(1.0, knob * top)), self.fits, self.steps)
        if widest is None or widest.fingerprint() == plan.fingerprint():
            return plan
        return widest
