"""Every test gets the harness's fixtures (``tests/support``) and one torch thread; under
xdist the modules with slow tests go out first (:func:`pytest_collection_modifyitems`)."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ("tests.support.fixtures",)


def pytest_configure(config: pytest.Config) -> None:
    # Two cores on CI: one intra-op thread per test process keeps timings sane.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # Tests send requests faster than any client should (and servers they start inherit
    # this); the tests of the rate limit set their own (service_tests/test_api_limits.py).
    os.environ.setdefault("TOPIARY_RATE_LIMIT", "100000/second")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist (``make test``: ``--dist loadscope --no-loadscope-reorder`` hands out a
    module at a time, in this order, so each module's fixtures are built once), the
    modules holding a test marked ``slow`` go first: the longest work starts while there
    is other work to share, and no worker is left running it alone at the end. A
    module's tests keep their order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)
