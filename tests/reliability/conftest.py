"""Fixtures of the reliability tier: a cluster of real processes on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Cluster


@pytest.fixture
def cluster(postgres_admin_url: str, postgres_template: str, tmp_path: Path) -> Iterator[Cluster]:
    """Fresh databases and a home folder; every process it starts is killed afterwards.

    The processes' logs stay under the test's ``tmp_path/logs``.
    """
    with Cluster.create(postgres_admin_url, tmp_path / "home", template=postgres_template,
                        logs=tmp_path / "logs") as cluster:
        yield cluster
