"""The job pages in real headless Chromium, against a real server (``topiary serve``).

Chromium is Debian's ``chromium`` package (installed here when missing and we are root),
driven over its own DevTools protocol: navigate, read the DOM after the scripts ran,
screenshot. The job has a real Optuna study (see ``seed_searched_job`` in test_ui.py).
Outside CI the tests skip, saying why, when Chromium cannot be had; in CI they fail.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image
from websockets.sync.client import ClientConnection, connect

from core.catalog import CHECKPOINT_FORMATS
from service.config import Settings
from service.db import create_engine_for, migrate
from service.tenants import create_api_key
from tests.service_tests.test_ui import finish_job, seed_searched_job
from tests.support import program_environment, served_api

pytestmark = pytest.mark.slow
CHROMIUM_NAMES = ("chromium", "chromium-browser")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                  "--window-size=1200,1600", "--remote-debugging-port=0")
FRONT_ORANGE = (0xE0, 0x75, 0x1B)  # .point.front in topiary.css
KEPT_GREEN = (0x2F, 0x7D, 0x4F)  # .bar-kept


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI needs headless Chromium for the job page tests: {reason}")
    pytest.skip(f"{reason}; install Debian's chromium package (apt-get install chromium) to "
                "run the job page tests in a real browser")


def _find_chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of the Chromium executable, installing Debian's package when missing."""
    found = _find_chromium()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        _unavailable("chromium is not installed and apt-get cannot install it here "
                     "(not root, or not Debian)")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    result = subprocess.run(install, env=environment, capture_output=True, text=True)
    if result.returncode != 0:  # a stale package list: refresh it once
        subprocess.run(["apt-get", "update"], env=environment, capture_output=True)
        result = subprocess.run(install, env=environment, capture_output=True, text=True)
    found = _find_chromium()
    if not found:
        _unavailable(f"`apt-get install chromium` failed: {result.stderr.strip()[-500:]}")
    return str(found)


class Navigated(AssertionError):
    """The page navigated while a command ran in it (DevTools: "Inspected target navigated
    or closed"): a ``wait_for`` polling across a click that navigates can meet it."""


class DevToolsPage:
    """One browser tab over the DevTools protocol; remembers errors and requested URLs."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection
        self._next_id = 0
        self.errors: list[str] = []
        self.requested: list[str] = []
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")

    def _record(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            self.errors.append(json.dumps(params["exceptionDetails"])[:500])
        elif (method == "Log.entryAdded" and params["entry"]["level"] == "error"
              and params["entry"]["source"] != "network"):  # 401 / 404 answers are expected
            self.errors.append(f"{params['entry'].get('url', '')}: {params['entry']['text']}")
        elif method == "Network.requestWillBeSent":
            self.requested.append(params["request"]["url"])

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        self._connection.send(json.dumps({"id": self._next_id, "method": method,
                                          "params": params}))
        while True:
            message = json.loads(self._connection.recv(timeout=30))
            if message.get("id") == self._next_id:
                error = message.get("error", {})
                if "navigated" in error.get("message", ""):
                    raise Navigated(f"{method}: {error}")
                assert "error" not in message, f"{method}: {message['error']}"
                return message.get("result", {})  # type: ignore[no-any-return]
            self._record(message)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, expression: str, seconds: float = 20) -> Any:
        deadline = time.monotonic() + seconds
        while True:
            try:
                value = self.evaluate(expression)
            except Navigated:
                value = None  # the page navigated under the expression: ask the new one
            if value:
                return value
            if time.monotonic() > deadline:
                text = self.evaluate("document.body ? document.body.innerText : ''")
                raise AssertionError(f"timed out waiting for {expression!r}; page errors: "
                                     f"{self.errors}; page text: {text[:800]!r}")
            time.sleep(0.2)

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def screenshot(self) -> Image.Image:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return Image.open(io.BytesIO(base64.b64decode(data["data"]))).convert("RGB")


@dataclass
class LiveServer:
    url: str
    settings: Settings
    key: str
    other_key: str
    job_id: str
    other_job_id: str

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", timeout=10,
                             headers={"Authorization": f"Bearer {self.key}"})
        response.raise_for_status()
        return response.json()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """``topiary serve`` with API keys on, tenant acme owning two jobs and globex one."""
    home = tmp_path_factory.mktemp("ui-home")
    settings = Settings(home=home, auth="key")
    settings.ensure_directories()
    migrate(settings.database_url)
    engine = create_engine_for(settings.database_url)
    try:
        acme, globex = create_api_key(engine, "acme"), create_api_key(engine, "globex")
        seed_searched_job(engine, settings.optuna_url, acme.tenant.id, name="older-run",
                          n_trials=8, seed=1)
        job = seed_searched_job(engine, settings.optuna_url, acme.tenant.id)
        other = seed_searched_job(engine, settings.optuna_url, globex.tenant.id,
                                  name="globex-secret-run", n_trials=6)
    finally:
        engine.dispose()
    with served_api(program_environment(home, auth="key"), home / "serve.log") as served:
        yield LiveServer(url=served.base_url, settings=settings, key=acme.key,
                         other_key=globex.key, job_id=job.id, other_job_id=other.id)


@pytest.fixture(scope="module")
def page(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevToolsPage]:
    """A fresh headless Chromium (its own profile) and its one tab."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    browser = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                "about:blank"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            assert browser.poll() is None, f"chromium exited with {browser.returncode}"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        tab = next(target for target in targets if target["type"] == "page")
        with connect(tab["webSocketDebuggerUrl"], max_size=None, open_timeout=20) as connection:
            yield DevToolsPage(connection)
    finally:
        browser.terminate()
        try:
            browser.wait(timeout=10)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait()


def _count(page: DevToolsPage, selector: str) -> int:
    return int(page.evaluate(f"document.querySelectorAll({json.dumps(selector)}).length"))


def _colour_pixels(image: Image.Image, box: dict[str, float], colour: tuple[int, int, int],
                   scale: float) -> int:
    crop = image.crop((box["left"] * scale, box["top"] * scale, box["right"] * scale,
                       box["bottom"] * scale))
    distance = np.abs(np.asarray(crop, dtype=np.int32) - np.asarray(colour, dtype=np.int32))
    return int(np.all(distance <= 12, axis=-1).sum())


def test_jobs_list_takes_the_key_from_the_address_once(server: LiveServer, page: DevToolsPage,
                                                       tmp_path: Path) -> None:
    page.open(f"{server.url}/ui/?key={server.key}")
    page.wait_for("document.querySelectorAll('#jobs tbody tr').length === 2")
    assert page.evaluate("location.href") == f"{server.url}/ui/"  # the key left the address
    rows = page.evaluate("[...document.querySelectorAll('#jobs tbody tr')].map(r => r.innerText)")
    assert "resnet20-digits" in rows[0] and "older-run" in rows[1]  # newest first
    assert all("searching" in row for row in rows) and "14 / 20 trials" in rows[0]
    assert "globex-secret-run" not in page.evaluate("document.body.innerText")
    page.screenshot().save(tmp_path / "jobs-page.png")
    page.evaluate(f"document.querySelector('a[href=\"jobs/{server.job_id}\"]').click()")
    page.wait_for(f"location.pathname === '/ui/jobs/{server.job_id}'")
    page.wait_for("document.querySelectorAll('.tradeoff .point').length > 0")
    assert page.errors == []


def test_job_page_draws_every_trial_the_front_and_the_channels(
        server: LiveServer, page: DevToolsPage, tmp_path: Path) -> None:
    job = server.get(f"/v1/jobs/{server.job_id}")
    trials = server.get(f"/v1/jobs/{server.job_id}/trials")["data"]
    front = {t["number"] for t in server.get(f"/v1/jobs/{server.job_id}/pareto")["data"]}
    measured = {t["number"] for t in trials if t["accuracy"] is not None}
    page.open(f"{server.url}/ui/jobs/{server.job_id}")
    page.wait_for(f"document.querySelectorAll('.tradeoff .point').length === {len(measured)}")
    plotted = page.evaluate("[...document.querySelectorAll('.tradeoff .point')]"
                            ".map(p => [Number(p.dataset.trial), p.classList.contains('front')])")
    assert {number for number, _ in plotted} == measured
    assert {number for number, on_front in plotted if on_front} == front and front
    assert page.evaluate("document.querySelector('.best-ring').dataset.trial") == str(
        job["best"]["trial"])
    assert _count(page, ".front-line") == 1 and _count(page, ".baseline-marker") == 1
    # Each trial's fidelity (what its accuracy measured), counted under the chart.
    fidelities = [t["fidelity"] for t in trials if t["fidelity"] is not None]
    counted = ", ".join(f"{fidelities.count(name)} {name}" for name in ("costs", "short")
                        if name in fidelities)
    assert {"costs", "short"} <= set(fidelities)
    assert f"by fidelity: {counted}" in page.evaluate(
        "document.getElementById('tradeoff-note').textContent")

    plan, groups = job["best"]["plan"], job["baseline"]["groups"]
    rows = page.evaluate("[...document.querySelectorAll('.channels .layer')].map(g => "
                         "[g.dataset.group, Number(g.dataset.kept), Number(g.dataset.baseline),"
                         " g.classList.contains('dropped')])")
    assert [row[0] for row in rows] == [group["name"] for group in groups]
    for (name, kept, channels, dropped), group in zip(rows, groups, strict=True):
        assert channels == group["channels"]
        assert dropped == (group["block"] in plan["drop_blocks"])
        assert kept == (0 if dropped else plan["keep"].get(name, channels))
    assert plan["drop_blocks"] and any(row[3] for row in rows)
    assert page.evaluate("document.getElementById('job-status').textContent") == "searching"
    assert "14 / 20 trials" in page.evaluate("document.getElementById('job-progress-label')"
                                             ".textContent")

    image = page.screenshot()
    image.save(tmp_path / "job-page.png")
    scale = image.width / page.evaluate("document.documentElement.clientWidth")
    boxes = page.evaluate("Object.fromEntries(['tradeoff-chart', 'channels-chart'].map(id => "
                          "[id, document.getElementById(id).getBoundingClientRect().toJSON()]))")
    assert _colour_pixels(image, boxes["tradeoff-chart"], FRONT_ORANGE, scale) > 40 * len(front)
    assert _colour_pixels(image, boxes["channels-chart"], KEPT_GREEN, scale) > 200 * len(groups)
    assert page.errors == []


def test_job_page_follows_the_job_to_its_downloads(server: LiveServer, page: DevToolsPage,
                                                   tmp_path: Path) -> None:
    page.open(f"{server.url}/ui/jobs/{server.job_id}")
    page.wait_for("document.getElementById('job-status').textContent === 'searching'")
    assert _count(page, "#downloads a") == 0
    engine = create_engine_for(server.settings.database_url)
    try:
        best = server.get(f"/v1/jobs/{server.job_id}")["best"]
        finish_job(engine, server.job_id, Path(str(server.settings.artifact_dir)), best)
    finally:
        engine.dispose()
    # No reload: the page's own polling picks the change up.
    page.wait_for("document.getElementById('job-status').textContent === 'succeeded'")
    page.wait_for("document.querySelectorAll('#downloads a').length === "
                  f"{len(CHECKPOINT_FORMATS)}")
    page.screenshot().save(tmp_path / "finished-job-page.png")
    page.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(tmp_path))
    page.evaluate("document.querySelector('#downloads li[data-format=onnx] a').click()")
    deadline = time.monotonic() + 20
    expected = Path(str(server.settings.artifact_dir)) / f"{server.job_id}.onnx"
    saved = tmp_path / "resnet20-digits.onnx"
    while not (saved.exists() and saved.read_bytes() == expected.read_bytes()):
        assert time.monotonic() < deadline, f"no download in {list(tmp_path.iterdir())}"
        time.sleep(0.2)
    assert page.errors == []


def test_another_tenants_job_shows_nothing_and_no_key_asks_for_one(server: LiveServer,
                                                                    page: DevToolsPage) -> None:
    page.open(f"{server.url}/ui/jobs/{server.other_job_id}")
    page.wait_for("!document.getElementById('message').hidden")
    text = page.evaluate("document.body.innerText")
    assert f"No job {server.other_job_id}" in text and "globex-secret-run" not in text
    assert page.evaluate("document.getElementById('job').hidden") is True
    page.evaluate("sessionStorage.clear()")
    page.open(f"{server.url}/ui/")
    page.wait_for("!document.getElementById('key-form').hidden")
    assert _count(page, "#jobs tbody tr") == 0
    # Every request any page made went to this server: nothing from a CDN or elsewhere.
    hosts = {urlsplit(url).netloc for url in page.requested if not url.startswith(("data:",
                                                                                  "blob:"))}
    assert hosts == {urlsplit(server.url).netloc}
    assert page.errors == []


def test_the_api_docs_render_under_their_policy_from_this_server_alone(
        server: LiveServer, page: DevToolsPage) -> None:
    """Swagger UI, self-hosted, on a loopback server (``TOPIARY_DOCS=loopback``)."""
    page.errors.clear()
    page.requested.clear()
    page.open(f"{server.url}/docs")
    operations = page.wait_for("document.querySelectorAll('.opblock').length", seconds=60)
    assert operations >= 15
    assert "DELETE" in page.evaluate("document.body.innerText")
    assert page.errors == []  # a blocked script or style would be one
    assert page.requested and all(url.startswith(server.url) for url in page.requested)


def test_a_wait_whose_poll_meets_a_navigation_asks_the_new_page(server: LiveServer,
                                                                page: DevToolsPage) -> None:
    """The harness itself: a ``wait_for`` poll in flight when the page navigates (as after
    a click on a job's link) is answered "Inspected target navigated or closed"; the wait
    asks the new page instead of failing (it failed a CI run once)."""
    page.open(f"{server.url}/ui/?key={server.key}")
    page.wait_for("document.readyState === 'complete'")
    target = f"/ui/jobs/{server.job_id}"
    # The first poll navigates and never answers; the next one runs on the new page.
    assert page.wait_for(f"location.pathname === '{target}' "
                         f"|| new Promise(() => {{ location.href = '{target}'; }})")
