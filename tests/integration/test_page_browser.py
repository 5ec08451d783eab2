"""The conversation page in a real headless Chromium, against a real ``zq api`` and workers.

Screenshots go to ``$ZQ_TEST_ARTIFACTS/page`` (default ``test-artifacts/page``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from common.job import ModelType
from producer.client import Client
from tests.conftest import require
from tests.integration.cluster import Cluster
from tests.integration.test_api_server import AUTH, KEY, Api
from zq.processes import stop

pytestmark = pytest.mark.integration
playwright = pytest.importorskip("playwright.sync_api")
JOB_TIMEOUT_MS = 180_000
LAPTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def chromium_path() -> str | None:
    """Debian's Chromium binary, if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def artifacts() -> Path:
    """Where the screenshots are kept after the run."""
    root = Path(os.environ.get("ZQ_TEST_ARTIFACTS", "test-artifacts"))
    out = root / "page"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium driven by Playwright."""
    binary = chromium_path()
    require(binary is not None, "Debian's chromium")
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def api(cluster: Cluster, tmp_path: Path) -> Iterator[Api]:
    """``zq api`` with one key, on Ceph RGW storage (so images cannot be local files)."""
    server = Api(cluster, tmp_path / "api.log", {"ZQ_API_KEYS": KEY})
    yield server
    stop(server.proc)


class Watched:
    """A page with its console errors and uncaught exceptions recorded."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        page.set_default_timeout(30_000)

    def card(self, turn_index: int) -> Any:
        """The card of the n-th job submitted (0-based), in submission order."""
        return self.page.locator("article.turn").nth(turn_index)

    def wait_succeeded(self, job_id: str) -> None:
        """Until the job's card shows success and its picture has loaded."""
        self.page.wait_for_function(
            """id => {
                const card = document.querySelector(`article.turn[data-job-id="${id}"]`);
                const img = card && card.querySelector(':scope > .card img.picture');
                return card && card.dataset.status === 'succeeded'
                    && img && !img.hidden && img.complete && img.naturalWidth > 0;
            }""", arg=job_id, timeout=JOB_TIMEOUT_MS)

    def send(self, prompt: str) -> str:
        """Type a prompt, press the composer's button; the new job's id."""
        before = set(self.job_ids())
        self.page.fill("#prompt", prompt)
        self.page.click("#send")
        self.page.wait_for_function(
            "n => document.querySelectorAll('article.turn').length > n", arg=len(before))
        (new,) = set(self.job_ids()) - before
        return new

    def job_ids(self) -> list[str]:
        """Every card's job id, in document order."""
        ids: list[str] = self.page.eval_on_selector_all(
            "article.turn", "cards => cards.map(c => c.dataset.jobId)")
        return ids


def open_page(browser: Any, api: Api, viewport: dict[str, int], path: str = "/",
              **context_options: Any) -> Watched:
    """A fresh browser context on the page."""
    context = browser.new_context(viewport=viewport, accept_downloads=True, **context_options)
    watched = Watched(context.new_page())
    watched.page.goto(f"http://127.0.0.1:{api.port}{path}")
    return watched


def test_three_turns_with_a_painted_mask_a_branch_and_an_hd_redraw(
        cluster: Cluster, client: Client, api: Api, browser: Any, artifacts: Path,
        tmp_path: Path) -> None:
    cluster.start_many(*ModelType)
    tab = open_page(browser, api, LAPTOP)
    page = tab.page
    page.click("#key-button")
    page.fill("#key", KEY)
    page.click("#key-form button[type=submit]")
    page.click("#options summary")
    for field, value in (("#width", "64"), ("#height", "64"), ("#steps", "2"), ("#seed", "7")):
        page.fill(field, value)

    first = tab.send("a night view of a futuristic city")
    assert page.inner_text("#conversation") == f"conversation {first}"
    assert page.evaluate("location.hash") == f"#c={first}"
    tab.wait_succeeded(first)
    assert page.inner_text("#target-text").startswith("Edit turn 1")
    page.screenshot(path=artifacts / "1-first-turn.png")

    second = tab.send("brighter, add neon signs and flying cars")
    tab.wait_succeeded(second)

    # Turn 3: paint the left third of turn 2's picture, at strength 0.4.
    page.click("#paint-mask")
    canvas = page.locator("#painter-canvas")
    canvas.wait_for(state="visible")
    box = canvas.bounding_box()
    assert box is not None and box["width"] >= 200  # a small picture still gets a usable stage
    page.fill("#brush", "150")
    page.mouse.move(box["x"] + box["width"] * 0.08, box["y"] + 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.08, box["y"] + box["height"] - 2, steps=12)
    page.mouse.up()
    page.screenshot(path=artifacts / "2-painting-a-mask.png")
    page.click("#painter-done")
    page.wait_for_function("() => document.querySelector('#mask-state').textContent"
                           ".startsWith('mask: painted (64\u00d764)')")
    page.fill("#strength", "0.4")
    third = tab.send("make the building on the left Chinese-style with flying eaves")
    tab.wait_succeeded(third)

    # A branch: edit turn 1 again, beside turn 2.
    tab.page.locator(f'article.turn[data-job-id="{first}"] > .card button.edit').click()
    assert page.inner_text("#target-text").startswith("Branch from turn 1")
    branch = tab.send("the same city under snow")
    tab.wait_succeeded(branch)

    # An HD redraw of turn 3, on the base model at twice the size.
    page.locator(f'article.turn[data-job-id="{third}"] > .card button.hd').click()
    page.wait_for_function("() => document.querySelectorAll('article.turn').length === 5")
    (hd,) = set(tab.job_ids()) - {first, second, third, branch}
    tab.wait_succeeded(hd)
    page.screenshot(path=artifacts / "3-conversation-laptop.png", full_page=True)

    jobs = {job_id: fetch_job(api, job_id) for job_id in (first, second, third, branch, hd)}
    assert [jobs[j]["parent_id"] for j in (second, third, branch, hd)] == [
        first, second, first, third]
    assert {j["conversation_id"] for j in jobs.values()} == {first}
    assert (jobs[third]["kind"], jobs[third]["model"], jobs[third]["strength"]) == (
        "edit", "edit", 0.4)
    assert (jobs[hd]["kind"], jobs[hd]["model"], jobs[hd]["width"]) == ("refine", "base", 128)
    assert all(j["status"] == "succeeded" and j["seed"] == 7 for j in jobs.values())
    check_painted_mask(client, jobs[third]["mask"])

    # The tree on the page: turn 1 holds both branches; turn 3 holds the HD redraw.
    children = page.eval_on_selector_all(
        f'article.turn[data-job-id="{first}"] > .children > article.turn',
        "cards => cards.map(c => c.dataset.jobId)")
    assert children == [second, branch]
    assert page.locator(f'article.turn[data-job-id="{third}"] > .children > article.turn'
                        ).get_attribute("data-job-id") == hd

    check_downloads(tab, third, tmp_path)
    assert page.is_hidden("#key-form")
    assert tab.errors == [], tab.errors
    check_phone_view(browser, api, first, artifacts)


def check_phone_view(browser: Any, api: Api, conversation_id: str, artifacts: Path) -> None:
    """The conversation's address on a phone: every turn and picture, no sideways scrolling."""
    phone = open_page(browser, api, PHONE, is_mobile=True, has_touch=True)
    phone.page.evaluate("key => localStorage.setItem('zq-api-key', key)", KEY)
    phone.page.goto(f"http://127.0.0.1:{api.port}/#c={conversation_id}")
    phone.page.reload()
    phone.page.wait_for_function(
        "() => [...document.querySelectorAll('img.picture')].filter("
        "i => !i.hidden && i.complete && i.naturalWidth > 0).length === 5", timeout=60_000)
    assert phone.page.evaluate(
        "document.scrollingElement.scrollWidth <= window.innerWidth"), "sideways scroll"
    send_box = phone.page.locator("#send").bounding_box()
    assert send_box is not None and send_box["height"] >= 40  # a finger's target
    phone.page.screenshot(path=artifacts / "4-conversation-phone.png", full_page=True)
    assert phone.errors == [], phone.errors


def fetch_job(api: Api, job_id: str) -> dict[str, Any]:
    """The job's public record over REST."""
    status, _, body = api.request("GET", f"/v1/jobs/{job_id}", headers=AUTH)
    assert status == 200, body
    record: dict[str, Any] = json.loads(body)
    return record


def check_painted_mask(client: Client, mask_key: str | None) -> None:
    """The stored mask: the picture's size, white down the painted left edge, black elsewhere."""
    assert mask_key
    with Image.open(io.BytesIO(client.store.get(mask_key))) as stored:
        mask = stored.convert("L")
    assert mask.size == (64, 64)
    assert mask.getpixel((2, 32)) == 255 and mask.getpixel((60, 32)) == 0
    painted = sum(1 for value in mask.tobytes() if value > 127) / (64 * 64)
    assert 0.05 < painted < 0.5, painted


def check_downloads(tab: Watched, job_id: str, tmp_path: Path) -> None:
    """The image and manifest buttons download the job's PNG and its manifest."""
    card = tab.page.locator(f'article.turn[data-job-id="{job_id}"] > .card')
    with tab.page.expect_download() as image_download:
        card.locator("a.download-image").click()
    image_path = tmp_path / image_download.value.suggested_filename
    image_download.value.save_as(image_path)
    with Image.open(io.BytesIO(image_path.read_bytes())) as image:
        assert (image.format, image.size) == ("PNG", (64, 64))
    with tab.page.expect_download() as manifest_download:
        card.locator("button.download-manifest").click()
    manifest_path = tmp_path / manifest_download.value.suggested_filename
    manifest_download.value.save_as(manifest_path)
    assert json.loads(manifest_path.read_text())["job_id"] == job_id


def test_a_missing_key_and_a_bad_field_are_explained_on_the_page(
        api: Api, browser: Any, artifacts: Path) -> None:
    tab = open_page(browser, api, LAPTOP)
    page = tab.page
    page.fill("#prompt", "a lantern")
    page.click("#send")
    page.wait_for_selector("#key-form", state="visible")
    assert "API key" in page.inner_text("#error")

    page.fill("#key", KEY)
    page.click("#key-form button[type=submit]")
    assert page.is_hidden("#key-form")
    page.click("#options summary")
    page.fill("#width", "5008")
    page.fill("#height", "64")
    page.click("#send")
    page.wait_for_function("() => document.querySelector('#error').textContent.includes('width')")
    assert page.inner_text("#error") == "width: between 16 and 4096 pixels (got 5008)"
    page.screenshot(path=artifacts / "5-bad-field.png")
    assert page.inner_text("#conversation") == "new conversation"  # nothing was submitted
    assert page.locator("article.turn").count() == 0
    # The browser reports each refused request; nothing else may go wrong.
    assert len(tab.errors) == 2, tab.errors
    assert "401" in tab.errors[0] and "422" in tab.errors[1], tab.errors


def test_the_page_is_served_with_a_strict_policy_and_no_key(api: Api) -> None:
    status, headers, html = api.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'src="/ui/page.js"' in html and b"<script>" not in html  # no inline script
    assert "script-src 'self'" in headers["content-security-policy"]
    for asset, media in (("page.js", "text/javascript"), ("page.css", "text/css")):
        status, headers, _ = api.request("GET", f"/ui/{asset}")
        assert (status, headers["content-type"].split(";")[0]) == (200, media)
    for missing in ("/ui/nope.js", "/ui/..%2Fapp.py", "/ui/index.html%00"):
        status, headers, _ = api.request("GET", missing)
        assert (status, headers["content-type"]) == (404, "application/problem+json"), missing
    assert api.request("GET", "/v1/conversations/x")[0] == 401  # the data still needs a key
