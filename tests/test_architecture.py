"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and they bite.

`make lint` and `make test` run lint-imports too; these tests keep the contracts
honest: a copy of the packages with a deliberate wrong-way import must fail them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "models", "search", "workers", "service", "cli")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True,
                          text=True, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


@pytest.fixture()
def copy_of_the_code(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_code_keeps_every_contract(copy_of_the_code: Path) -> None:
    result = _lint(copy_of_the_code)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("service/api/routes/health.py", "import torch", "API process never imports torch"),
    ("service/api/routes/health.py", "import optuna", "API routes never import Optuna"),
    ("search/space.py", "import workers.worker", "Training stack"),
    ("models/plan.py", "import optuna", "models knows neither Optuna"),
    ("core/spec.py", "import models.plan", "core imports nothing of ours"),
    ("service/jobs/_state.py", "import service.api.app", "Server: core"),
    ("workers/worker.py", "import cli.main", "Training stack"),
    ("cli/latency_agent/_timing.py", "import torch", "latency agent imports no torch"),
    ("cli/latency_agent/_app.py", "import service.config", "latency agent imports no torch"),
])
def test_a_wrong_way_import_breaks_its_contract(copy_of_the_code: Path, module: str, line: str,
                                                contract: str) -> None:
    with (copy_of_the_code / module).open("a") as file:
        file.write(f"\n{line}  # deliberate violation\n")
    result = _lint(copy_of_the_code)
    assert result.returncode != 0, result.stdout
    broken = [row for row in result.stdout.splitlines() if row.endswith("BROKEN")]
    assert any(contract in row for row in broken), result.stdout
