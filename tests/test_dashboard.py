"""The dashboard: served at `/`, then used in a real browser (headless Chromium driven by Playwright)
against a real gunicorn and a real worker.

Screenshots of every view at 1280×800 and 390×844 are saved under test-artifacts/dashboard/.
The browser tests are skipped, saying why, only where Chromium or Playwright is not installed.
"""

from __future__ import annotations

import base64
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import redis
import requests
from PIL import Image

from services.app import create_app
from shared import pipeline, serialization
from shared.keys import Keys
from shared.registry import Registry
from tests.api_helpers import model_blob, sample, version_meta
from tests.live_fixtures import ROOT, Process, Server, StackEnv, start_server, start_worker, wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # the dev extra pins it; a bare environment may lack it
    sync_playwright = None  # type: ignore[assignment]

pytestmark = pytest.mark.slow

#: Debian's chromium (`apt-get install chromium`); Playwright's own browser builds are never downloaded.
CHROMIUM = os.environ.get("MNIST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
VIEWS = ("models", "training", "draw", "inspect", "monitor")
#: Milliseconds the page may take for one step (a view's data, a prediction, an evaluation).
STEP_MS = 20_000
#: Seconds a training job may take in the browser test, on busy cores.
JOB_SECONDS = 180.0


# --- the page, without a browser -----------------------------------------------------------------


def test_the_page_and_its_modules_are_served() -> None:
    app = create_app({"api_token": "t", "MODEL_WATCHER": False})
    client = app.test_client()
    page = client.get("/")
    assert page.status_code == 200 and page.content_type.startswith("text/html")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    html = page.get_data(as_text=True)
    assert '<script type="module" src="/static/js/main.js">' in html
    static = ROOT / "services" / "api" / "static"
    for module in sorted((static / "js").glob("*.js")):
        r = client.get(f"/static/js/{module.name}")
        assert r.status_code == 200 and "javascript" in r.content_type, module.name  # ES modules need it
    assert client.get("/static/css/dashboard.css").content_type.startswith("text/css")
    assert "/" not in client.get("/openapi.json").get_json()["paths"]  # a page, not an API route


def test_the_predictor_role_serves_no_page() -> None:
    app = create_app({"api_token": "t", "role": "predictor", "MODEL_WATCHER": False})
    assert app.test_client().get("/").status_code == 404


# --- the preprocessing the page shares with the Python client --------------------------------------


def client_mnist(rgba: np.ndarray) -> list[int]:
    """Return the 784 pixels the Python client (client/images.py) makes of an RGBA picture."""
    images = pytest.importorskip("client.images", reason="client/images.py (the reference) is not there")
    return images.to_mnist(images.grayscale(Image.fromarray(rgba, "RGBA"))).reshape(784).tolist()


def rgba_of(
    gray: np.ndarray, color: tuple[int, int, int] = (255, 255, 255), alpha: bool = False
) -> np.ndarray:
    """Return an RGBA picture whose ink (gray / 255) is `color` on black, or on transparent with `alpha`."""
    frac = gray.astype(np.float64)[..., None] / 255
    rgb = np.rint(frac * np.array(color)).astype(np.uint8)
    a = gray[..., None] if alpha else np.full((*gray.shape, 1), 255, np.uint8)
    return np.concatenate([rgb, a.astype(np.uint8)], axis=2)


# --- the browser -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium; skips, saying why, where Chromium or Playwright is missing."""
    if sync_playwright is None:
        pytest.skip("playwright is not installed: `make install` installs the dev extra (playwright==1.65.2)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(
            f"no Chromium at {CHROMIUM}: `make browser` (apt-get install chromium) or set MNIST_CHROMIUM"
        )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def trained() -> tuple[bytes, dict[str, Any]]:
    """Return a small model trained in-process on mnist-sample (~91 %), as a worker would publish it."""
    spec = pipeline.load_spec(
        {
            "model": "mnist",
            "hidden": [32],
            "optimizer": "adam",
            "learning_rate": 0.003,
            "batch_size": 64,
            "epochs": 3,
        }
    )
    run = pipeline.prepare(spec)
    result = run.trainer.run()
    meta = pipeline.model_meta(run, result, pipeline.evaluate(run, result), job_id="in-process")
    return serialization.model_to_bytes(result.params, meta), meta


class Tab:
    """A page on the dashboard, with the errors it raised."""

    def __init__(self, page: Page, url: str) -> None:
        self.page = page
        self.url = url
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        # Refused requests (a 4xx the page handles) are logged by Chromium as console errors too.
        page.on(
            "console",
            lambda m: (
                self.errors.append(m.text)
                if m.type == "error" and "Failed to load resource" not in m.text
                else None
            ),
        )
        page.set_default_timeout(STEP_MS)

    def open(self, view: str) -> None:
        """Show `view` and wait until its data is on screen."""
        self.page.goto(f"{self.url}/#{view}")
        self.page.wait_for_selector(f"body[data-view='{view}']")

    def shot(self, name: str, full_page: bool = True) -> None:
        """Save a screenshot (of the whole page, by default) as test-artifacts/dashboard/<name>.png."""
        self.page.evaluate("window.scrollTo(0, 0)")
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)

    def assert_fits(self) -> None:
        """Assert the page does not scroll sideways, nor does the row of tabs."""
        width = self.page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
        assert width[0] <= width[1], f"horizontal overflow: {width}"
        tabs = self.page.evaluate("(t => [t.scrollWidth, t.clientWidth])(document.querySelector('.tabs'))")
        assert tabs[0] <= tabs[1], f"the tabs do not fit: {tabs}"

    def assert_heading_below_bar(self, view: str) -> None:
        """Assert `view`'s heading is not under the sticky top bar."""
        heading = self.page.locator(f"#{view}-title").bounding_box()
        bar = self.page.locator(".topbar").bounding_box()
        assert heading is not None and bar is not None
        assert heading["y"] >= bar["y"] + bar["height"], (view, heading, bar)

    def give_token(self, token: str, field: str = "#token-input") -> None:
        """Answer the token dialog (the API token, or the predict token with field="#predict-token-input")."""
        self.page.wait_for_selector("#token-dialog[open]")
        self.page.fill(field, token)
        self.page.click("#token-form button[type=submit]")
        self.page.wait_for_selector("#token-dialog:not([open])", state="attached")

    def draw(self, strokes: list[list[tuple[float, float]]]) -> None:
        """Draw polylines on the pad; points are in the pad's 280×280 coordinates."""
        box = self.page.locator("#pad").bounding_box()
        assert box is not None
        scale = box["width"] / 280
        for stroke in strokes:
            x, y = stroke[0]
            self.page.mouse.move(box["x"] + x * scale, box["y"] + y * scale)
            self.page.mouse.down()
            for x, y in stroke[1:]:
                self.page.mouse.move(box["x"] + x * scale, box["y"] + y * scale, steps=6)
            self.page.mouse.up()


@pytest.fixture
def tab(browser: Browser, server: Server) -> Iterator[Tab]:
    """A desktop-sized page on this test's server; fails the test on any uncaught page error."""
    context = browser.new_context(viewport=DESKTOP)
    t = Tab(context.new_page(), server.url)
    yield t
    context.close()
    assert not t.errors, t.errors


def publish(server: Server, model: str, blobs: list[tuple[bytes, dict[str, Any]]]) -> list[int]:
    """Publish versions straight into the server's registry, as a worker does."""
    conn = redis.Redis.from_url(server.env.redis_url)
    try:
        registry = Registry(conn, Keys(server.env.prefix))
        return [registry.publish(model, blob, meta, job_id=meta.get("job_id")) for blob, meta in blobs]
    finally:
        conn.close()


SEVEN = [[(70, 60), (200, 60), (200, 90), (120, 240)]]
ONE = [[(150, 40), (140, 240)]]


def test_every_view_at_desktop_and_phone_size(
    browser: Browser, server: Server, trained: tuple[bytes, dict[str, Any]]
) -> None:
    blob, meta = trained
    random_meta = {**version_meta("job-seeded", hidden=8), "spec": {"model": "mnist"}}
    publish(server, "mnist", [(model_blob(seed=3), random_meta), (blob, meta)])
    requests.put(
        f"{server.url}/v1/models/mnist/aliases/production",
        json={"version": 2},
        headers=server.env.auth,
        timeout=10,
    )
    for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        context = browser.new_context(viewport=viewport)
        tab = Tab(context.new_page(), server.url)
        for view in VIEWS:
            tab.open(view)
            if view == "draw":
                tab.draw(SEVEN)
                tab.page.wait_for_selector("#draw-result:not([data-label=''])")
            elif view == "inspect":
                tab.page.click("#inspect-form button[type=submit]")
                tab.give_token(server.env.token)  # an evaluation always takes a token
                tab.page.wait_for_selector("#inspect-result:not([hidden])")
                assert tab.page.locator("#confusion tbody tr").count() == 10
                shown = tab.page.locator("#misclassified .digit").count()
                assert 0 < shown <= 100
            tab.assert_fits()
            tab.shot(f"{view}-{size}")
        tab.page.click("#token-button")
        tab.page.wait_for_selector("#token-dialog[open]")
        tab.shot(f"token-{size}", full_page=False)
        context.close()
        assert not tab.errors, tab.errors


def test_a_view_opened_by_its_link_starts_below_the_top_bar(
    browser: Browser, server: Server, trained: tuple[bytes, dict[str, Any]]
) -> None:
    """Opening /#view (a fresh page, or a tab's link) scrolls its heading to just below the sticky bar."""
    publish(server, "mnist", [trained])
    for viewport in (DESKTOP, PHONE):
        context = browser.new_context(viewport=viewport)
        tab = Tab(context.new_page(), server.url)
        for view in VIEWS:
            tab.page.goto("about:blank")
            tab.open(view)  # a page loaded with the view's fragment
            tab.page.wait_for_load_state("load")
            tab.assert_heading_below_bar(view)
        tab.page.click("[data-tab='training']")  # a link within the page scrolls to its view too
        tab.page.wait_for_selector("body[data-view='training']")
        tab.assert_heading_below_bar("training")
        context.close()
        assert not tab.errors, tab.errors


#: Epochs of the job watched from the page (two series, so twice as many points per chart).
EPOCHS = 40


def test_submit_a_job_and_watch_its_curves_grow(tab: Tab, server: Server, worker: Process) -> None:
    tab.open("training")
    form = tab.page.locator("#job-form")
    form.locator("[name=model]").fill("live-curve")
    # Long enough (a few seconds even on an idle machine) to watch the curve grow in steps.
    form.locator("[name=hidden]").fill("256")
    form.locator("[name=learning_rate]").fill("0.003")
    form.locator("[name=batch_size]").fill("64")
    form.locator("[name=epochs]").fill(str(EPOCHS))
    form.locator("button[type=submit]").click()
    tab.give_token(server.env.token)  # the first write asks for the token

    seen: list[int] = []
    shot_taken = False
    deadline = time.monotonic() + JOB_SECONDS
    while time.monotonic() < deadline:
        status, points = tab.page.evaluate(
            "[document.getElementById('job-watch').dataset.status,"
            " +document.getElementById('chart-loss').dataset.points]"
        )
        if not seen or points != seen[-1]:
            seen.append(points)
        if status == "started" and points >= 4 and not shot_taken:
            tab.shot("training-live-desktop")
            shot_taken = True
        if status in ("finished", "failed", "canceled"):
            break
        time.sleep(0.1)
    assert status == "finished", (status, tab.page.inner_text("#watch-message"))
    # Two series (train and validation loss), one point per epoch, drawn as they came.
    assert seen == sorted(seen) and seen[-1] == 2 * EPOCHS, seen
    assert len([p for p in seen if 0 < p < 2 * EPOCHS]) >= 1, f"the curve never grew step by step: {seen}"
    assert tab.page.locator("#chart-accuracy").get_attribute("data-points") == str(2 * EPOCHS)
    tab.page.wait_for_selector("#watch-message a")
    assert "live-curve v1" in tab.page.inner_text("#watch-message")
    tab.shot("training-finished-desktop")

    # A long job, canceled from the page once it runs.
    form.locator("[name=epochs]").fill("200")
    form.locator("button[type=submit]").click()
    tab.page.wait_for_selector("#job-watch[data-status=started]", timeout=int(JOB_SECONDS * 1000))
    tab.page.click("#watch-cancel")
    tab.page.wait_for_selector("#job-watch[data-status=canceled]")
    assert tab.page.locator(".job-row").count() >= 2

    tab.open("models")
    tab.page.select_option("#models-select", "live-curve")
    tab.page.wait_for_selector(".version-card[data-version='1']")
    assert tab.page.locator(".version-card").count() == 1  # the canceled job published nothing


def test_the_page_works_when_the_server_guards_reads(
    browser: Browser, stack_env: StackEnv, tmp_path: Path, trained: tuple[bytes, dict[str, Any]]
) -> None:
    """With MNIST_PREDICT_TOKEN set, every read takes a token: the page asks once and sends it."""
    predict = "predict-" + stack_env.token
    guarded = start_server(stack_env, tmp_path, MNIST_PREDICT_TOKEN=predict)
    worker = start_worker(stack_env, tmp_path, OPENBLAS_NUM_THREADS="1")
    context = browser.new_context(viewport=DESKTOP)
    tab = Tab(context.new_page(), guarded.url)
    try:
        publish(guarded, "mnist", [trained])
        tab.page.goto(f"{guarded.url}/#models")
        tab.page.wait_for_selector("#token-reason:not([hidden])")  # the first read was refused (401)
        assert "predict token" in tab.page.inner_text("#token-reason")
        tab.give_token(predict, "#predict-token-input")
        tab.page.wait_for_selector(".version-card[data-version='1']")
        tab.page.wait_for_selector("body[data-view='models']")

        tab.open("draw")  # a prediction with the predict token
        tab.draw(ONE)
        tab.page.wait_for_selector("#draw-result:not([data-label=''])")
        tab.open("inspect")  # an evaluation with the predict token
        tab.page.click("#inspect-form button[type=submit]")
        tab.page.wait_for_selector("#inspect-result:not([hidden])")

        tab.open("training")  # a write asks for the API token; its events are read with the predict token
        form = tab.page.locator("#job-form")
        form.locator("[name=model]").fill("guarded")
        form.locator("[name=hidden]").fill("16")
        form.locator("[name=epochs]").fill("3")
        form.locator("button[type=submit]").click()
        tab.give_token(guarded.env.token)
        tab.page.wait_for_selector("#job-watch[data-status=finished]", timeout=int(JOB_SECONDS * 1000))
        assert "guarded v1" in tab.page.inner_text("#watch-message")
        assert tab.page.locator("#chart-loss").get_attribute("data-points") == "6"  # both series, 3 epochs
        tab.shot("guarded-reads-desktop")
    finally:
        context.close()
        worker.stop()
        guarded.process.stop()
    # Refused requests are logged by the browser as errors: here the first reads, on purpose.
    assert all("401" in e or "Unauthorized" in e for e in tab.errors), tab.errors


def test_promote_and_roll_back(tab: Tab, server: Server) -> None:
    publish(server, "mnist", [(model_blob(seed=s), version_meta(f"job-{s}")) for s in (0, 1)])
    alias_url = f"{server.url}/v1/models/mnist/aliases/production"
    tab.page.add_init_script("sessionStorage.setItem('mnist.token', 'a-stale-token')")
    tab.open("models")
    assert tab.page.locator(".version-card").count() == 2
    assert "No production alias" in tab.page.inner_text("#models-alias")

    tab.page.click(".version-card[data-version='1'] button")
    # The stale token is refused (403): the page asks again, with the reason, and retries.
    tab.page.wait_for_selector("#token-reason:not([hidden])")
    tab.give_token(server.env.token)
    tab.page.wait_for_selector(".version-card[data-version='1'][data-aliases='production']")
    assert tab.page.inner_text("#production-version") == "v1"
    assert requests.get(alias_url, timeout=10).json()["version"] == 1

    tab.page.click(".version-card[data-version='2'] button")
    tab.page.wait_for_selector(".version-card[data-version='2'][data-aliases='production']")
    assert tab.page.get_attribute(".version-card[data-version='1']", "data-aliases") == ""
    assert requests.get(alias_url, timeout=10).json()["version"] == 2
    tab.shot("models-promoted-desktop")

    tab.page.click("#rollback")
    tab.page.wait_for_selector(".version-card[data-version='1'][data-aliases='production']")
    assert requests.get(alias_url, timeout=10).json()["version"] == 1
    assert tab.page.evaluate("sessionStorage.getItem('mnist.token')") == server.env.token

    # Production split 3:1 (through the API): the banner and the cards show each version's share.
    split = {"versions": {"1": 3, "2": 1}, "reason": "canary"}
    r = requests.put(alias_url, json=split, headers=server.env.auth, timeout=10)
    assert r.status_code == 200, r.text
    tab.page.reload()
    tab.page.wait_for_selector("#production-split")
    assert tab.page.inner_text("#production-split") == "v1 75% · v2 25%"
    assert tab.page.get_attribute(".version-card[data-version='1']", "data-share") == "0.75"
    assert tab.page.get_attribute(".version-card[data-version='2']", "data-share") == "0.25"
    assert tab.page.inner_text(".version-card[data-version='2'] .share") == "25% of production"
    tab.shot("models-split-desktop")


#: Requests routed by production's split (one image each, one routing key each), with feedback.
ROUTED = 60
#: Feedback labels per version the online accuracy is computed over (MNIST_FEEDBACK_WINDOW).
WINDOW = 20
#: Inverted digits (dark ink on white) sent to v2 by number: its live images drift from its training set's
#: (more than drift.MIN_IMAGES, so the score may say "drifted").
INVERTED = 120


#: Seconds between two refreshes of the Monitor view (INTERVAL in static/js/monitor.js).
MONITOR_INTERVAL = 2.0
#: Hide (true) or show (false) the page as a background tab would be, for the page's scripts.
VISIBILITY = """(hidden) => {
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => hidden });
    document.dispatchEvent(new Event('visibilitychange'));
}"""


def shown_number(text: str) -> float:
    """Return the number a figure on the page starts with ("88.9%", "4.54 / 0.25 drifted")."""
    found = re.match(r"\d+(\.\d+)?", text)
    assert found, text
    return float(found.group())


def logged_live(api: str) -> list[dict[str, Any]]:
    """Return the live entries among a model's newest 1,000 logged predictions."""
    entries = requests.get(f"{api}/predictions?limit=1000", timeout=10).json()["predictions"]
    return [e for e in entries if e["kind"] == "live"]


def shadow_answers(api: str) -> bool:
    """Ask v2 for one digit; return whether the log holds an answer of the shadow yet."""
    x_test = sample().x_test
    assert x_test is not None
    digit = {"instances": [x_test[-1].reshape(784).tolist()]}
    answer = requests.post(f"{api}/versions/2:predict", json=digit, timeout=10)
    assert answer.status_code == 200, answer.text
    entries = requests.get(f"{api}/predictions?version=1&limit=1000", timeout=10).json()["predictions"]
    return any(e["kind"] == "shadow" for e in entries)


def settled(api: str) -> dict[str, Any] | None:
    """Return the model's monitor figures if two reads 0.5 s apart agree (the recorder is done), else None."""
    first = requests.get(f"{api}/monitor", timeout=10).json()["versions"]
    time.sleep(0.5)
    second = requests.get(f"{api}/monitor", timeout=10).json()["versions"]
    return second if first == second else None


def send_traffic(server: Server) -> list[dict[str, Any]]:
    """Predict INVERTED digits with v2, then ROUTED ones through the split; label the routed ones.

    A connection per request (no session): both server processes answer, and shadow, some.
    """
    ds = sample()
    assert ds.x_test is not None and ds.y_test is not None
    labels = []
    for i in range(INVERTED):
        image = 255 - ds.x_test[ROUTED + i].reshape(784)
        answer = requests.post(
            f"{server.url}/v1/models/mnist/versions/2:predict",
            json={"instances": [image.tolist()]},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
    for i in range(ROUTED):
        answer = requests.post(
            f"{server.url}/v1/models/mnist:predict",
            json={"instances": [ds.x_test[i].reshape(784).tolist()]},
            headers={"X-Routing-Key": f"user-{i}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        labels.append({"request_id": answer.json()["request_id"], "label": int(ds.y_test[i])})
    return labels


def test_the_monitor_shows_live_figures_and_decides_the_rollout(
    browser: Browser, stack_env: StackEnv, tmp_path: Path, trained: tuple[bytes, dict[str, Any]]
) -> None:
    # Every prediction logged, and every image profiled for drift: the figures are exact.
    # The online accuracy over a window of the last 10 to 20 labels: below each version's 27 or 33.
    live = start_server(
        stack_env, tmp_path, MNIST_LOG_SAMPLE="1", MNIST_DRIFT_SAMPLE="1", MNIST_FEEDBACK_WINDOW=str(WINDOW)
    )
    api = f"{live.url}/v1/models/mnist"
    auth = live.env.auth
    context = browser.new_context(viewport=DESKTOP)
    tab = Tab(context.new_page(), live.url)
    try:
        blob, meta = trained
        again = (blob, {**meta, "job_id": "in-process-again"})  # one network, two versions (two jobs)
        assert publish(live, "mnist", [trained, again]) == [1, 2]
        r = requests.put(f"{api}/aliases/production", json={"version": 1}, headers=auth, timeout=10)
        assert r.status_code == 200, r.text
        canary = {"action": "canary", "version": 2, "weight": 0.5, "reason": "half and half"}
        r = requests.post(f"{api}/rollout", json=canary, headers=auth, timeout=10)
        assert r.status_code == 200, r.text
        shadow = {"version": 1, "sample": 1.0}  # v1 also answers, unseen, every image v2 serves
        r = requests.put(f"{api}/shadow", json=shadow, headers=auth, timeout=10)
        assert r.status_code == 200, r.text
        # A server process learns the shadow at its first poll after the model's first request.
        wait_for(lambda: shadow_answers(api), 30, "the shadow to answer", interval=0.2)
        labels = send_traffic(live)
        # Feedback finds a request once the recorder has logged it (off the request path).
        ids = {label["request_id"] for label in labels}
        wait_for(lambda: ids <= {e["request_id"] for e in logged_live(api)}, 30, "the recorder to log them")
        counted = requests.post(f"{api}/feedback", json={"labels": labels}, timeout=10).json()
        assert counted["accepted"] == ROUTED, counted
        monitor = wait_for(lambda: settled(api), 30, "the monitor's figures to settle")
        assert sum(v["total"]["feedback"] for v in monitor.values()) == ROUTED
        assert all(monitor[v]["requests"] > 0 for v in ("1", "2")), monitor  # the split sent both some
        assert monitor["2"]["drift"]["drifted"]  # inverted digits are far from the training set
        assert monitor["1"]["shadow"]["compared"] > 0 and monitor["2"]["shadow"] is None

        tab.open("monitor")
        for version, figures in monitor.items():
            card = f".monitor-card[data-version='{version}']"
            tab.page.wait_for_selector(f"{card}[data-requests='{figures['requests']}']")
            assert tab.page.get_attribute(card, "data-feedback") == str(figures["feedback"])
            assert float(tab.page.get_attribute(card, "data-accuracy") or "nan") == pytest.approx(
                figures["online_accuracy"]
            )
            shown = shown_number(tab.page.inner_text(f"{card} .accuracy dd"))  # a percentage, 1 decimal
            assert shown == pytest.approx(figures["online_accuracy"] * 100, abs=0.051)
            total = figures["total"]
            assert figures["feedback"] <= WINDOW < total["feedback"]
            accuracy = tab.page.inner_text(f"{card} .accuracy")
            assert f"last {figures['feedback']} feedback labels" in accuracy
            assert f"of {total['feedback']} in total" in accuracy
            assert shown_number(tab.page.inner_text(f"{card} .accuracy .total")) == pytest.approx(
                total["online_accuracy"] * 100, abs=0.051
            )
            assert tab.page.get_attribute(card, "data-weight") == "0.5"
            assert tab.page.get_attribute(card, "data-drifted") == str(figures["drift"]["drifted"]).lower()
            shown = shown_number(tab.page.inner_text(f"{card} .drift dd"))  # 2 decimals
            assert shown == pytest.approx(figures["drift"]["score"], abs=0.0051)
        compared = monitor["1"]["shadow"]["compared"]
        shadow_card = ".monitor-card[data-version='1']"
        shown = shown_number(tab.page.inner_text(f"{shadow_card} .agreement dd"))
        assert shown == pytest.approx(monitor["1"]["shadow"]["agreement"] * 100, abs=0.051)
        assert f"of {compared} compared" in tab.page.inner_text(f"{shadow_card} .agreement")
        assert "shadow 100%" in tab.page.inner_text(f"{shadow_card} .version-head")
        assert tab.page.locator(".monitor-card[data-version='2'] .agreement").count() == 0
        assert tab.page.locator(".monitor-card[data-version='2'].is-drifted").count() == 1
        assert tab.page.locator(".monitor-card[data-version='2'] .drift-pill").inner_text() == "drifted"

        # The live feed: the newest 20 logged predictions, each image drawn from its logged pixels.
        logged = requests.get(f"{api}/predictions?limit=20&pixels=true", timeout=10).json()["predictions"]
        items = tab.page.locator("#monitor-feed .feed-item")
        assert items.count() == 20
        assert [items.nth(i).get_attribute("data-entry") for i in range(20)] == [p["entry"] for p in logged]
        drawn = tab.page.evaluate(
            """() => Array.from(document.querySelector('#monitor-feed .feed-item canvas')
                 .getContext('2d').getImageData(0, 0, 28, 28).data.filter((_, i) => i % 4 === 0))"""
        )
        assert drawn == logged[0]["pixels"]
        # The log holds the split's answers (the newest 20 may all be one version's, or the shadow's).
        recent = requests.get(f"{api}/predictions?limit=1000", timeout=10).json()["predictions"]
        assert {p["version"] for p in recent if p["kind"] == "live"} == {1, 2}
        assert tab.page.locator("#decisions .decision").first.get_attribute("data-action") == "canary"
        assert "half and half" in tab.page.inner_text("#decisions")
        tab.assert_fits()
        tab.shot("monitor-live-desktop")
        phone = browser.new_context(viewport=PHONE)
        small = Tab(phone.new_page(), live.url)
        small.open("monitor")
        small.page.wait_for_selector("#monitor-feed .feed-item")
        small.assert_fits()
        small.shot("monitor-live-phone")
        phone.close()
        assert not small.errors, small.errors

        # Refreshed while shown: one more answer of v1 shows without a reload.
        before = int(tab.page.get_attribute(".monitor-card[data-version='1']", "data-requests") or 0)
        x_test = sample().x_test
        assert x_test is not None
        digit = {"instances": [x_test[0].reshape(784).tolist()]}
        assert requests.post(f"{api}/versions/1:predict", json=digit, timeout=10).status_code == 200
        tab.page.wait_for_selector(f".monitor-card[data-version='1'][data-requests='{before + 1}']")
        # Paused while the browser tab is hidden, refreshed at once when it shows again.
        asked: list[str] = []
        tab.page.on("request", lambda r: asked.append(r.url) if "/monitor" in r.url else None)
        tab.page.evaluate(VISIBILITY, True)
        tab.page.wait_for_selector("#monitor-live[data-state='hidden']")
        asked.clear()  # a refresh already in flight asked before the tab was hidden
        time.sleep(3 * MONITOR_INTERVAL)
        assert asked == [], asked
        with tab.page.expect_request(lambda r: "/monitor" in r.url):
            tab.page.evaluate(VISIBILITY, False)
        tab.page.wait_for_selector("#monitor-live[data-state='live']")

        # Roll the canary back: the first write asks for the token; the split is v1's alone.
        tab.page.fill("#rollout-reason", "v2 sees inverted digits")
        tab.page.click("#canary-rollback")
        tab.give_token(live.env.token)
        tab.page.wait_for_selector("#rollout[data-canary='']")
        rollout = requests.get(f"{api}/rollout", timeout=10).json()
        assert rollout["split"] == {"1": 1.0} and rollout["canary"] is None
        assert rollout["decisions"][0]["reason"] == "v2 sees inverted digits"
        tab.page.wait_for_selector("#decisions .decision[data-action='rollback']")
        assert "v2 sees inverted digits" in tab.page.inner_text("#decisions .decision >> nth=0")

        # A canary started from the page, then promoted.
        tab.page.select_option("#canary-version", "2")
        tab.page.fill("#canary-weight", "20")
        tab.page.fill("#rollout-reason", "second try")
        tab.page.click("#canary-start")
        tab.page.wait_for_selector("#rollout[data-canary='2']")
        assert requests.get(f"{api}/rollout", timeout=10).json()["split"] == {"1": 0.8, "2": 0.2}
        assert tab.page.inner_text("#canary-promote") == "Promote v2"
        tab.shot("monitor-canary-desktop")
        tab.page.click("#canary-promote")
        tab.page.wait_for_selector("#rollout[data-canary='']")
        rollout = requests.get(f"{api}/rollout", timeout=10).json()
        assert rollout["split"] == {"2": 1.0}
        assert [d["action"] for d in rollout["decisions"][:3]] == ["promote", "canary", "rollback"]
        assert requests.get(f"{api}/aliases/production", timeout=10).json()["version"] == 2

        # A refused decision says why, on the page: the weight (checked here), the state (by the server).
        tab.page.select_option("#canary-version", "1")
        tab.page.fill("#canary-weight", "150")
        tab.page.click("#canary-start")
        tab.page.wait_for_selector("#rollout-error:not([hidden])")
        assert "between 0 and 100" in tab.page.inner_text("#rollout-error")
        halves = {"versions": {"1": 0.5, "2": 0.5}, "reason": "by hand"}
        r = requests.put(f"{api}/aliases/production", json=halves, headers=auth, timeout=10)
        assert r.status_code == 200, r.text
        tab.page.fill("#canary-weight", "10")
        tab.page.click("#canary-start")  # a canary needs one base version, not a split: 409
        tab.page.wait_for_selector("#rollout-error:has-text('not one base version')")
        assert requests.get(f"{api}/rollout", timeout=10).json()["split"] == {"1": 0.5, "2": 0.5}
    finally:
        context.close()
        live.process.stop()
    assert not tab.errors, tab.errors


def test_draw_a_digit_and_get_ten_probabilities(
    tab: Tab, server: Server, trained: tuple[bytes, dict[str, Any]]
) -> None:
    publish(server, "mnist", [trained, (model_blob(seed=5), version_meta("job-random"))])
    tab.open("draw")
    assert tab.page.evaluate("getComputedStyle(document.getElementById('pad')).touchAction") == "none"
    tab.page.select_option("#draw-version", "1")
    tab.draw(ONE)
    tab.page.wait_for_selector("#draw-result:not([data-label=''])")
    bars = tab.page.locator("#draw-bars .prob-bar")
    assert bars.count() == 10
    probabilities = [float(bars.nth(i).get_attribute("data-p") or "nan") for i in range(10)]
    assert sum(probabilities) == pytest.approx(1, abs=1e-3)
    label = int(tab.page.get_attribute("#draw-result", "data-label") or -1)
    assert label == int(np.argmax(probabilities)) and label == 1  # the trained version reads a stroke as a 1
    assert tab.page.get_attribute("#draw-result", "data-version") == "1"
    assert int(tab.page.get_attribute("#pad-preview", "data-ink") or 0) > 10

    tab.page.select_option("#draw-version", "2")  # another version answers the same drawing
    tab.page.wait_for_selector("#draw-result[data-version='2']")
    tab.page.click("#pad-clear")
    assert tab.page.get_attribute("#draw-result", "data-label") == ""


def test_the_page_preprocesses_like_the_python_client(tab: Tab) -> None:
    rng = np.random.default_rng(7)
    digit = np.kron(sample().x_test[3].reshape(28, 28), np.ones((9, 9), np.uint8))  # 252×252
    photo = np.clip(175 + rng.normal(0, 12, digit.shape) - 0.6 * digit, 0, 255).astype(np.uint8)
    blob = np.zeros((200, 300), np.uint8)
    blob[40:90, 30:270] = rng.integers(0, 256, (50, 240))  # wide, noisy, off-centre
    corner = np.zeros((120, 120), np.uint8)
    corner[0:10, 90:120] = 255  # mass at the edge: what falls outside 28×28 is cut off
    dot = np.zeros((50, 60), np.uint8)
    dot[20:23, 30:32] = 200  # tiny: scaled up
    cases = {
        "digit": rgba_of(digit),
        "ink on paper": rgba_of(255 - digit),  # dark on light: inverted first
        "grey noisy paper": rgba_of(photo),  # background and noise floor subtracted
        "coloured ink": rgba_of(digit, (200, 40, 90)),
        "black ink on transparent": rgba_of(digit, (0, 0, 0), alpha=True),  # composited over white
        "wide": rgba_of(blob),
        "corner": rgba_of(corner),
        "dot": rgba_of(dot),
        "blank": rgba_of(np.zeros((30, 30), np.uint8)),
    }
    tab.open("draw")
    for name, rgba in cases.items():
        h, w = rgba.shape[:2]
        got = tab.page.evaluate(
            """async ([b64, w, h]) => {
                const { toMnist } = await import('/static/js/preprocess.js');
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                return Array.from(toMnist(bytes, w, h));
            }""",
            [base64.b64encode(rgba.tobytes()).decode(), w, h],
        )
        assert got == client_mnist(rgba), name
    # What the page sends for a drawing is what the client makes of the same canvas.
    tab.draw(SEVEN)
    tab.page.wait_for_selector("#pad-preview[data-ink]:not([data-ink='0'])")
    pad = pixels_of(tab, "pad", 280).reshape(280, 280, 4)
    preview = pixels_of(tab, "pad-preview", 28)
    assert preview[0::4].tolist() == client_mnist(pad)


def pixels_of(tab: Tab, canvas: str, size: int) -> np.ndarray:
    """Return the RGBA bytes of a square canvas (as base64 in transit: a long JS array is slow to pass)."""
    b64 = tab.page.evaluate(
        """([id, size]) => {
            const data = document.getElementById(id).getContext('2d').getImageData(0, 0, size, size).data;
            let text = '';
            for (let i = 0; i < data.length; i += 8192) {
                text += String.fromCharCode(...data.subarray(i, i + 8192));
            }
            return btoa(text);
        }""",
        [canvas, size],
    )
    return np.frombuffer(base64.b64decode(b64), dtype=np.uint8)
