"""Every test gets the harness's fixtures (``tests/support``) and one torch thread."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ("tests.support.fixtures",)


def pytest_configure(config: pytest.Config) -> None:
    # Two cores on CI: one intra-op thread per test process keeps timings sane.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist (``make test``), tests marked ``slow`` go out first: the longest jobs
    start while there is still other work to share, and no worker is left running one
    alone at the end. Within each half the order is kept (a module's tests stay in
    their order)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)
