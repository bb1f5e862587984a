"""Every test gets the harness's fixtures (``tests/support``) and one torch thread."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ("tests.support.fixtures",)


def pytest_configure(config: pytest.Config) -> None:
    # Two cores on CI: one intra-op thread per test process keeps timings sane.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
