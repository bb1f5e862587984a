"""Optuna search over prune plans. ``core.spec`` is torch-free (the API uses it)."""
