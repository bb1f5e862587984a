"""Torch-free vocabulary every package shares: errors, catalog, job spec, trial record."""
