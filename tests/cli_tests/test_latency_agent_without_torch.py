"""The latency agent runs where torch is not installed: it never imports torch, nor the
training stack or the server, even while it checks and times models."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.cli_tests.conftest import SECRET, Networks
from tests.support import REPOSITORY

SCRIPT = textwrap.dedent("""
    import hashlib, sys
    from pathlib import Path

    from starlette.testclient import TestClient

    from cli.latency_agent import AgentSettings, ModelStore, create_app

    folder, secret, *models = sys.argv[1:]
    app = create_app(AgentSettings(secret=secret, threads=1), ModelStore(Path(folder), 4))
    with TestClient(app, headers={"Authorization": f"Bearer {secret}"}) as client:
        digests = []
        for path in models:
            data = Path(path).read_bytes()
            digests.append(hashlib.sha256(data).hexdigest())
            response = client.put(f"/v1/models/{digests[-1]}", content=data)
            assert response.status_code == 201, response.text
        response = client.post("/v1/compare", json={
            "reference": digests[0], "candidate": digests[1], "input_shape": [3, 16, 16],
            "runs": 5, "warmup": 1})
        assert response.status_code == 200, response.text
    imported = sorted(name for name in sys.modules if name.split(".")[0] in
                      {"torch", "torchvision", "models", "search", "workers", "service",
                       "optuna", "sqlalchemy"})
    assert not imported, imported
    print("torch-free")
""")


def test_the_agent_never_imports_torch(tmp_path: Path, networks: Networks) -> None:
    paths = []
    for name, data in (("wide", networks.wide_onnx), ("narrow", networks.narrow_onnx)):
        paths.append(tmp_path / f"{name}.onnx")
        paths[-1].write_bytes(data)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "store"), SECRET, *map(str, paths)],
        capture_output=True, text=True, timeout=180, cwd=REPOSITORY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("torch-free")
