"""Hard limits from the spec, as Optuna constraint values (feasible when <= 0).

Each limit is ``value / limit - 1``: 0.12 means 12% over the limit, so the
same number tells Optuna about feasibility and a user how far a plan missed.
The limits themselves live in ``core.limits``, where the API reads them too.
"""

from __future__ import annotations

from core.limits import Limit, active_limits, violations

__all__ = ["Limit", "active_limits", "violations"]
