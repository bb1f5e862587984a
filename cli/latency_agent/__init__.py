"""The latency agent: runs on the device a user deploys to and times, for the workers,
the ONNX models they send it, in ONNX Runtime or OpenVINO, without torch.

Protocol and worker-side settings: ``core.latency_agent``. Run it with
``topiary latency-agent`` or ``python -m cli.latency_agent`` (this package imports
nothing of the CLI, the server or the training stack, so a device needs only
numpy, pydantic, starlette, uvicorn and a runtime).
"""

from __future__ import annotations

from cli.latency_agent._app import create_app
from cli.latency_agent._serve import main, serve, settings_from
from cli.latency_agent._settings import AgentSettings, SettingsError
from cli.latency_agent._store import ModelStore

__all__ = ["AgentSettings", "ModelStore", "SettingsError", "create_app", "main", "serve",
           "settings_from"]
