"""The job pages (/ui): HTML shells and local assets, served by a real app on a real database.

``seed_searched_job`` builds a job the way the workers leave it: a baseline with the real
prunable groups of cifar_resnet20, an Optuna study whose trials were suggested by the real
search space, progress and best-so-far from ``workers.progress``, and (when finished)
checkpoint files. The browser test (test_ui_browser.py) uses it too.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import random
import re
import tomllib
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from fastapi.testclient import TestClient
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy import Engine

from core.catalog import CHECKPOINT_FORMATS
from core.spec import JobSpec
from core.trial import TrialRecord
from models.architectures import build_model
from models.plan import PrunePlan, prunable_groups, removable_blocks
from search.space import SearchSpace
from search.study import open_study, study_name_for
from service.api.routes.ui import STATIC_DIR, UI_DIR
from service.db import session_scope
from service.jobs import (
    JobStatus,
    record_artifact,
    set_baseline,
    set_study_name,
    submit_job,
    transition,
    update_progress,
)
from tests.service_tests.conftest import Api, spec_json
from workers.progress import progress_of

# An SVG namespace is an identifier, never fetched.
SVG_NAMESPACE = "http://www.w3.org/2000/svg"
CHECKPOINT_SUFFIXES = CHECKPOINT_FORMATS


@dataclass
class SeededJob:
    id: str
    spec: JobSpec
    trials: int
    measured: int


@functools.cache
def _resnet20_structure() -> tuple[list[Any], list[Any]]:
    torch.manual_seed(0)
    model = build_model("cifar_resnet20", num_classes=10)
    example = torch.randn(1, 3, 16, 16)
    return prunable_groups(model, example, round_to=4), removable_blocks(model, example)


def _plan_metrics(plan: PrunePlan, groups: list[Any], baseline: dict[str, Any],
                  rng: random.Random) -> dict[str, Any]:
    """Costs that shrink with the channels a plan keeps; accuracy that drops with thinner
    layers, and a little with each dropped block."""
    kept = {group.name: 0 if group.block in plan.drop_blocks
            else plan.keep.get(group.name, group.channels) for group in groups}
    fraction = sum(kept.values()) / sum(group.channels for group in groups)
    survivors = [group for group in groups if kept[group.name]]
    width = sum(kept[g.name] for g in survivors) / sum(g.channels for g in survivors)
    shrink = 0.2 + 0.8 * fraction ** 2
    latency = baseline["latency_ms"] * (0.15 + 0.85 * fraction) * rng.uniform(0.9, 1.1)
    accuracy = (baseline["accuracy"] - 0.25 * (1 - width) ** 2 - 0.004 * len(plan.drop_blocks)
                - rng.uniform(0, 0.02))
    return {"latency_ms": latency, "latency_p90_ms": latency * 1.08,
            "memory_mb": baseline["memory_mb"] * shrink, "flops": baseline["flops"] * shrink,
            "params": baseline["params"] * shrink, "accuracy": accuracy}


def seed_searched_job(engine: Engine, optuna_url: str, tenant_id: int, *,
                      name: str = "resnet20-digits", n_trials: int = 14, budget: int = 20,
                      seed: int = 0) -> SeededJob:
    """A ``searching`` job of ``budget`` trials, ``n_trials`` of them finished (two not
    measured) in its study."""
    spec = JobSpec.model_validate(spec_json(
        name=name, search={"n_trials": budget, "round_to": 4},
        objective={"mode": "constrained", "constraints": {"max_latency_ratio": 0.7}}))
    with session_scope(engine) as session:
        job_id = submit_job(session, tenant_id, spec, data_root=Path("/nonexistent"),
                            max_active_jobs=10_000).id
    groups, blocks = _resnet20_structure()
    baseline: dict[str, Any] = {
        "accuracy": 0.962, "latency_ms": 2.4, "latency_p90_ms": 2.6, "memory_mb": 1.6,
        "flops": 10.2e6, "params": 0.27e6, "device_description": "CPU (test)",
        "groups": [{"name": g.name, "channels": g.channels, "block": g.block} for g in groups],
        "blocks": [block.name for block in blocks]}
    transition(engine, job_id, JobStatus.PREPARING)
    set_baseline(engine, job_id, baseline, device_type="cpu")
    # Trials are run in memory, then stored in one go: one commit per trial, not per attribute.
    scratch = open_study(optuna.storages.InMemoryStorage(), "scratch", spec)
    space = SearchSpace.from_spec(groups, blocks, spec.search)
    latency_ratio = spec.objective.constraints.max_latency_ratio
    assert latency_ratio is not None
    max_latency = latency_ratio * baseline["latency_ms"]
    # As the workers do: warm-start plans first (here uniform widths), then the sampler's.
    for keep_ratio, dropped_blocks in ((0.9, []), (0.75, []), (0.6, []), (0.45, []),
                                       (0.75, [blocks[1].name, blocks[-2].name])):
        warm = PrunePlan.uniform(groups, keep_ratio, round_to=space.plan_round_to())
        scratch.enqueue_trial(space.params_for(warm.keep, dropped_blocks))
    rng = random.Random(seed)
    measured = 0
    for number in range(n_trials):
        trial = scratch.ask()
        keep, dropped = space.suggest(trial)
        plan = PrunePlan(keep=keep, drop_blocks=dropped, round_to=space.plan_round_to())
        TrialRecord(worker="test-worker").store(trial)
        if number in (5, 11):  # one stopped by the pruner, one crashed: neither measured
            scratch.tell(trial, state=TrialState.PRUNED if number == 5 else TrialState.FAIL)
            continue
        metrics = _plan_metrics(plan, groups, baseline, rng)
        feasible = metrics["latency_ms"] <= max_latency
        if not feasible:  # constraint missed: measured without the fine-tune
            metrics["accuracy"] -= 0.3
        TrialRecord(plan=plan.to_dict(), **metrics, fine_tune_seconds=1.2 if feasible else 0.0,
                    fidelity="short" if feasible else "costs",
                    violations={"max_latency_ratio": metrics["latency_ms"] / max_latency - 1}
                    ).store(trial)
        scratch.tell(trial, metrics["accuracy"])
        measured += 1
    study_name = study_name_for(job_id)
    storage = RDBStorage(optuna_url)
    try:
        study = open_study(storage, study_name, spec)
        study.add_trials(scratch.get_trials(deepcopy=False))
        transition(engine, job_id, JobStatus.SEARCHING)
        set_study_name(engine, job_id, study_name)
        progress, best = progress_of(study, spec)
        update_progress(engine, job_id, progress, best)
    finally:
        storage.remove_session()
        storage.engine.dispose()
    return SeededJob(id=job_id, spec=spec, trials=n_trials, measured=measured)


def finish_job(engine: Engine, job_id: str, artifact_dir: Path, best: dict[str, Any]) -> None:
    """Take a searching job to ``succeeded`` with its checkpoint files."""
    transition(engine, job_id, JobStatus.FINALIZING)
    for kind, suffix in CHECKPOINT_SUFFIXES.items():
        path = artifact_dir / f"{job_id}{suffix}"
        path.write_bytes(f"{kind} bytes of {job_id}".encode() * 100)
        payload = path.read_bytes()
        record_artifact(engine, job_id, kind, str(path), len(payload),
                        hashlib.sha256(payload).hexdigest())
    transition(engine, job_id, JobStatus.SUCCEEDED, best=best, phase="done")


class _LinkedAssets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in {"src", "href"} and value and tag in {"script", "link", "img"}:
                self.links.append(value)


def _linked_assets(html: str) -> list[str]:
    parser = _LinkedAssets()
    parser.feed(html)
    return parser.links


def _anonymous(api: Api) -> TestClient:
    client = TestClient(api.client.app)
    client.headers.pop("Authorization", None)
    return client


def test_pages_are_served_without_a_key_and_hold_no_job_data(api: Api) -> None:
    seeded = seed_searched_job(api.engine, api.settings.optuna_url, api.tenant_id)
    client = _anonymous(api)
    assert client.get("/v1/jobs").status_code == 401  # the data itself needs the key
    listing = client.get("/ui/")
    page = client.get(f"/ui/jobs/{seeded.id}")
    for response in (listing, page):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "connect-src 'self'" in csp
        assert response.headers["referrer-policy"] == "no-referrer"
        assert seeded.id not in response.text and "resnet20-digits" not in response.text
    assert page.text == client.get("/ui/jobs/no-such-job").text
    redirect = client.get("/ui", follow_redirects=False)
    assert redirect.status_code == 307 and redirect.headers["location"] == "ui/"


@pytest.mark.parametrize("page", ["/ui/", "/ui/jobs/some-id"])
def test_every_linked_asset_and_module_is_served_from_this_server(api: Api, page: str) -> None:
    client = _anonymous(api)
    base = client.base_url.join(page)
    html = client.get(page).text
    pending = [str(base.join(link)) for link in _linked_assets(html)]
    seen: set[str] = set()
    while pending:
        url = pending.pop()
        if url in seen:
            continue
        seen.add(url)
        assert url.startswith(f"{client.base_url}/ui/static/"), url
        response = client.get(url)
        assert response.status_code == 200, url
        if url.endswith(".js"):
            assert response.headers["content-type"].startswith("text/javascript")
            pending += [str(client.base_url.join(url).join(module)) for module in
                        re.findall(r'^import .*? from "(\./[\w.]+\.js)";', response.text,
                                   flags=re.MULTILINE | re.DOTALL)]
    names = {url.rsplit("/", 1)[1] for url in seen}
    assert {"topiary.css", "common.js", "topiary.svg"} <= names
    assert ({"job.js", "charts.js"} if "jobs/" in page else {"jobs.js"}) <= names


def test_no_file_of_the_pages_refers_to_another_host() -> None:
    files = [*UI_DIR.glob("*.html"), *STATIC_DIR.iterdir()]
    assert len(files) >= 8
    for path in files:
        text = path.read_text(encoding="utf-8").replace(SVG_NAMESPACE, "")
        assert not re.search(r"(https?:)?//[\w-]+\.[\w.-]+", text), path.name
        assert "@import" not in text and "url(" not in text, path.name


def test_every_file_of_the_pages_is_shipped_as_package_data() -> None:
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml")
                              .read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["*"]
    for path in [*UI_DIR.glob("*.*"), *STATIC_DIR.iterdir()]:
        assert any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns), path.name


def test_unknown_or_escaping_asset_names_are_404(api: Api) -> None:
    client = _anonymous(api)
    for name in ("nope.js", "..%2Froutes%2Fui.py", "..%2F..%2Fapp.py", "%2Fetc%2Fpasswd",
                 "jobs.html", "common"):
        response = client.get(f"/ui/static/{name}")
        assert response.status_code == 404, name
    assert client.get("/ui/static/charts.js").status_code == 200


def test_another_tenants_job_page_gets_nothing_from_the_api(api: Api) -> None:
    seeded = seed_searched_job(api.engine, api.settings.optuna_url, api.tenant_id)
    finish_job(api.engine, seeded.id, Path(str(api.settings.artifact_dir)),
               best=api.client.get(f"/v1/jobs/{seeded.id}").json()["best"])
    intruder = _anonymous(api)
    intruder.headers.update(api.other_tenant_headers())
    page = intruder.get(f"/ui/jobs/{seeded.id}")
    assert page.status_code == 200 and seeded.id not in page.text
    # What the page's script asks for, and the download links it would show.
    for path in ("", "/trials", "/pareto", "/checkpoint?format=safetensors",
                 "/checkpoint?format=onnx", "/checkpoint?format=pt2",
                 "/checkpoint?format=torchscript"):
        response = intruder.get(f"/v1/jobs/{seeded.id}{path}")
        assert response.status_code == 404, path
        assert "resnet20" not in response.text
    assert intruder.get("/v1/jobs").json()["count"] == 0
    assert api.client.get(f"/v1/jobs/{seeded.id}/checkpoint?format=onnx").status_code == 200


def test_the_api_gives_the_page_what_its_charts_draw(api: Api) -> None:
    seeded = seed_searched_job(api.engine, api.settings.optuna_url, api.tenant_id)
    job = api.client.get(f"/v1/jobs/{seeded.id}").json()
    trials = api.client.get(f"/v1/jobs/{seeded.id}/trials").json()["data"]
    front = api.client.get(f"/v1/jobs/{seeded.id}/pareto").json()["data"]
    assert job["status"] == "searching" and job["progress"]["trials_complete"] == seeded.measured
    measured = [t for t in trials if t["accuracy"] is not None and t["latency_ms"] is not None]
    assert len(trials) == seeded.trials and len(measured) == seeded.measured
    assert {t["feasible"] for t in measured} == {True, False}  # both kinds are drawn
    assert front and {t["number"] for t in front} <= {t["number"] for t in measured}
    # The channels chart: every group of the best plan has its baseline width.
    widths = {group["name"]: group["channels"] for group in job["baseline"]["groups"]}
    plan = job["best"]["plan"]
    assert set(plan["keep"]) <= set(widths)
    assert all(0 < plan["keep"][name] <= widths[name] for name in plan["keep"])
    assert set(plan["drop_blocks"]) <= set(job["baseline"]["blocks"])
    assert job["best"]["trial"] in {t["number"] for t in measured if t["feasible"]}
