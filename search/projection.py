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

Under FLOPs and parameter limits alone the checks count each plan from its widths
(``models.plan_count``, well under a millisecond) instead of pruning a copy and
counting it (about 0.1 s for ResNet-56 on a CPU core, up to some 36 checks a trial),
and the projected plan is confirmed on its really pruned network
(``search.fitting.PlanFit.confirm``); if the two counts differ (a layer the count
does not model), the projection is made again with every check pruning a copy.

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

Filling: one factor for every group cannot spend the whole budget on a coarse grid.
With a channel multiple of 8, a ResNet-56 plan keeping 8 of 16, 16 of 32 and 48 of 64
channels per stage moves only when its factor takes a stage-3 group to 56 (x1.17), and
the next step, x1.25, takes every stage-2 group to 24 as well: such a plan held 0.197 of
the FLOPs under a 0.25 limit in the ResNet-56 benchmark, and the search finalised it in
all three seeds; eight random ResNet-56 plans scaled onto a 0.25 limit held 0.10 to 0.25
of the FLOPs, and 0.29 to 0.50 under a 0.5 limit. So, when widening, the plan scaled
onto the limits (from under or over them) is then filled: single grid steps of one
group each, the group with the smallest share of its own width first (water-filling, so
the shape the factor kept is bent as little as the grid allows), taken for as long as
the plan fits. The longest fitting run of such steps is found by galloping then
bisection, and when a group's step breaks a limit that group is passed over and the
rest are tried again, as a cheaper group's step may still fit, for at most
``FILL_CHECKS`` checks (sized when each check pruned and counted a network). A plan
already using ``FILLED`` of a limit is neither widened nor filled, so projecting a
projected plan again mostly leaves it as it is.
Filled, the same eight plans held 0.246 to 0.250 and 0.496 to 0.500, for about 2.7 s
more each while every check pruned a copy.

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
from search.space import GroupRange, SearchSpace
from search.warm_start import largest_fitting

__all__ = ["FILLED", "FILL_CHECKS", "PROJECTED_METRICS", "PROJECTION_STEPS", "PlanProjection"]

#: Limits on these are projected onto; latency is left to the trial's timing.
PROJECTED_METRICS = frozenset({"flops", "params", "memory_mb"})
#: Bisection steps on the width factor (widths are on a grid of round_to steps).
PROJECTION_STEPS = 10
#: Checks of the limits one fill may spend.
FILL_CHECKS = 16
#: A plan using at least this share of a projected limit is on it: not filled.
FILLED = 0.99


class PlanProjection:
    """Scales plans onto the projected limits (see the module docstring).

    Args:
        model: the unpruned network (never modified).
        example_input: a batch of its input shape.
        limits: the job's active limits; those on ``PROJECTED_METRICS`` are projected.
        space: the search space, whose grid the projected widths stay on.
        accuracy_only: the objective rewards accuracy alone (``constrained`` mode): plans
            under the limits are widened onto them when every limit is projected.
        counted: checks count plans from their widths under FLOPs and parameter limits
            (False: each check prunes a copy; the benchmark's reference).
    """

    def __init__(self, model: nn.Module, example_input: Tensor, limits: Sequence[Limit],
                 space: SearchSpace, steps: int = PROJECTION_STEPS,
                 accuracy_only: bool = False, counted: bool = True) -> None:
        projected = [limit for limit in limits if limit.metric in PROJECTED_METRICS]
        self.fits = (PlanFit(model, example_input, projected, counted=counted)
                     if projected else None)
        self.limits = tuple(projected)
        self.space = space
        self.steps = steps
        #: Whether plans under the limits are widened onto them.
        self.widens = accuracy_only and bool(projected) and len(projected) == len(limits)

    def __call__(self, plan: PrunePlan) -> PrunePlan:
        """``plan`` itself when it meets the projected limits and is not widened (or there
        are no such limits, or even its narrowest scaling misses them), else its widest
        scaling that meets them."""
        if self.fits is None:
            return plan
        projected = self._projected(plan)
        if not self.fits.confirm(projected):
            projected = self._projected(plan)  # counted on pruned networks now
        return projected

    def _projected(self, plan: PrunePlan) -> PrunePlan:
        fits = self.fits
        assert fits is not None
        if fits(plan):
            if not self.widens or self._on_a_limit(plan):
                return plan
            return self._filled(self._widened(plan))
        projected = largest_fitting(lambda factor: self.space.scaled(plan, factor), fits,
                                    self.steps)
        if projected is None:
            return plan
        return self._filled(projected) if self.widens else projected

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

    def _on_a_limit(self, plan: PrunePlan) -> bool:
        """Whether ``plan`` uses ``FILLED`` of some projected limit."""
        assert self.fits is not None
        used = self.fits.metrics(plan)
        return any(limit.violation(used) >= FILLED - 1.0 for limit in self.limits)

    def _filled(self, plan: PrunePlan) -> PrunePlan:
        """``plan`` (which fits) with single grid steps of one group each added, narrowest
        share first, while it fits, in at most ``FILL_CHECKS`` checks (see the module
        docstring); ``plan`` itself when no step fits."""
        fits = self.fits
        assert fits is not None
        if self._on_a_limit(plan):
            return plan
        live = self.space.live_groups(plan.drop_blocks)
        keep = {group.name: plan.keep.get(group.name, group.channels) for group in live}
        passed: set[str] = set()
        checks = 0
        while checks < FILL_CHECKS and (steps := _water_steps(live, keep, passed)):

            def widened(count: int, steps: list[tuple[str, int]] = steps) -> PrunePlan:
                return self.space.to_plan({**keep, **dict(steps[:count])}, plan.drop_blocks)

            # The longest run of steps that fits: galloping (1, 2, 4, ... steps) until one
            # breaks a limit, then bisection. widened(fitting) fits, widened(breaking) not.
            fitting, breaking, galloping = 0, len(steps) + 1, True
            while breaking - fitting > 1 and checks < FILL_CHECKS:
                middle = (min(2 * fitting or 1, len(steps)) if galloping
                          else (fitting + breaking) // 2)
                checks += 1
                if fits(widened(middle)):
                    fitting = middle
                else:
                    breaking, galloping = middle, False
            keep.update(dict(steps[:fitting]))
            if breaking - fitting > 1 or fitting == len(steps):
                break
            passed.add(steps[fitting][0])  # its step breaks a limit; a cheaper one may not
        filled = self.space.to_plan(keep, plan.drop_blocks)
        return plan if filled.fingerprint() == plan.fingerprint() else filled


def _water_steps(groups: Sequence[GroupRange], keep: dict[str, int],
                 passed: set[str]) -> list[tuple[str, int]]:
    """Every single grid step that widens ``groups`` from ``keep`` to full width, in
    water-filling order (the group keeping the smallest share of its width first, the
    earlier group on ties), as (group, its width after the step); ``passed`` groups
    are left out."""
    widths = {group.name: keep[group.name] for group in groups if group.name not in passed}
    ranges = {group.name: group for group in groups}
    order = {group.name: position for position, group in enumerate(groups)}
    steps: list[tuple[str, int]] = []
    while True:
        open_groups = [name for name, width in widths.items()
                       if width < ranges[name].channels]
        if not open_groups:
            return steps
        name = min(open_groups,
                   key=lambda name: (widths[name] / ranges[name].channels, order[name]))
        widths[name] = ranges[name].wider(widths[name])
        steps.append((name, widths[name]))
