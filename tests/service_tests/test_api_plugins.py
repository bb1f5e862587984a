"""Plugin architectures (entry points of installed packages) from submission to network."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.catalog import PLUGIN_GROUP, plugin_architectures
from tests.service_tests.conftest import Api, spec_json

PLUGIN_MODULE = '''
from torch import nn


def build_tiny_cnn(num_classes: int = 10, width: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
'''


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A package installed the way pip leaves one: its module and its ``.dist-info``."""
    (tmp_path / "topiary_tiny_plugin.py").write_text(PLUGIN_MODULE)
    info = tmp_path / "topiary_tiny_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: topiary-tiny-plugin\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{PLUGIN_GROUP}]\ntiny_cnn = topiary_tiny_plugin:build_tiny_cnn\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin_architectures.cache_clear()
    yield "tiny_cnn"
    plugin_architectures.cache_clear()


def test_a_plugin_architecture_is_listed_accepted_and_built(api: Api,
                                                            installed_plugin: str) -> None:
    listed = {a["name"]: a for a in api.client.get("/v1/architectures").json()}
    assert listed[installed_plugin]["family"] == "plugin"
    assert "topiary-tiny-plugin" in listed[installed_plugin]["description"]

    spec = spec_json(model={"arch": installed_plugin, "num_classes": 10,
                            "arguments": {"width": 4}})
    response = api.client.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.text

    from models.architectures import build_model  # what the worker does with the spec

    network = build_model(installed_plugin, num_classes=10, width=4)
    assert network[0].out_channels == 4


def test_an_unknown_architecture_is_still_refused(api: Api, installed_plugin: str) -> None:
    response = api.client.post("/v1/jobs", json=spec_json(model={"arch": "tiny_cnn_typo"}))
    assert response.status_code == 422
    assert "tiny_cnn" in response.text  # the plugin is among the names offered
