"""The app in a real browser: Debian's Chromium driven headless by Playwright (never `playwright install`).

Generates and watches the streamed steps arrive, paints a mask and inpaints, runs a retrieval and the
masking-ratio tab. Screenshots go to ci-artifacts/screenshots/ (or $MAGE_ARTIFACTS/screenshots/); with
MAGE_SCREENSHOTS_DOCS=1 one screenshot per tab is also written to docs/screenshots/<tab>.png.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore:.*no_silent_downcasting",
                                                               "ignore:The copy keyword is deprecated")]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parent.parent

if not Path(CHROMIUM).is_file():
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")

from test_app import free_port, make_gallery, make_pipe  # noqa: E402  (same model/gallery as the API tests)

SHOTS = Path(os.environ.get("MAGE_ARTIFACTS", ROOT / "ci-artifacts")) / "screenshots"
DOCS = ROOT / "docs" / "screenshots" if os.environ.get("MAGE_SCREENSHOTS_DOCS") == "1" else None


def shot(page, name: str):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    if DOCS is not None:
        DOCS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    from app import Studio, build_demo, launch
    tmp = tmp_path_factory.mktemp("browser")
    pipe = make_pipe(tmp)
    demo = build_demo(Studio(pipe, None, gallery_dir=make_gallery(pipe, tmp)))
    port = free_port()
    launch(demo, port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def page(url):
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(tempfile.mkdtemp(prefix="mage-chromium-"), executable_path=CHROMIUM,
                                                   headless=True, args=ARGS, viewport={"width": 1400, "height": 1000})
        pg = ctx.new_page()
        requests = []
        pg.on("request", lambda r: requests.append(r.url))
        pg.goto(url)
        pg.wait_for_selector("#generate-btn", timeout=30_000)
        pg.requests = requests
        yield pg
        ctx.close()


def open_tab(page, name: str):
    page.get_by_role("tab", name=name).click()
    page.wait_for_timeout(300)


def pick_example(page, i: int, target: str):
    """Click the i-th visible example thumbnail and wait until it shows in the ``target`` image."""
    page.locator(".gallery-item:visible").nth(i).click()
    page.wait_for_selector(f"{target} img", timeout=15_000)


def wait_image(page, selector: str, timeout: float = 30_000):
    page.wait_for_function("(sel) => { const i = document.querySelector(sel + ' img');"
                           " return i && i.complete && i.naturalWidth > 0; }", arg=selector, timeout=timeout)


def record_values(page, selector: str):
    """Start recording every distinct value of a textarea (polled inside the page every 5 ms)."""
    page.evaluate("""(sel) => { window.__seen = []; clearInterval(window.__rec);
        window.__rec = setInterval(() => { const t = document.querySelector(sel);
            if (!t) return; const v = t.value; const s = window.__seen;
            if (!s.length || s[s.length - 1] !== v) s.push(v); }, 5); }""", selector)


def test_generate_streams_steps(page):
    open_tab(page, "Generate")
    record_values(page, "#status textarea")
    page.click("#generate-btn")
    page.wait_for_function("() => document.querySelector('#status textarea').value.includes('done')", timeout=60_000)
    seen = [v for v in page.evaluate("window.__seen") if v.startswith("step ")]
    steps = [int(v.split()[1].split("/")[0]) for v in seen]
    assert len(steps) >= 4, seen  # intermediate steps arrived one by one before the final image
    assert steps == sorted(steps) and steps[-1] == 12 and "done" in seen[-1]
    wait_image(page, "#gen-canvas")
    shot(page, "generate")
    # scrub back to step 3 with the slider's number box
    box = page.locator("#scrub input[type=number]")
    box.fill("3")
    box.press("Enter")
    page.wait_for_function("() => document.querySelector('#status textarea').value.startsWith('step 3/12')",
                           timeout=15_000)
    assert all(u.startswith("http://127.0.0.1") or u.startswith("data:") or u.startswith("blob:")
               for u in page.requests), [u for u in page.requests if "127.0.0.1" not in u][:5]


def test_paint_mask_and_inpaint(page):
    open_tab(page, "Inpaint / outpaint")
    pick_example(page, 0, "#inpaint-src")
    wait_image(page, "#mask-preview")
    page.locator("#mask-editor button[aria-label='Brush']").click()
    box = page.locator("#mask-editor canvas").last.bounding_box()
    x0, y0 = box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.25
    page.mouse.move(x0, y0)
    page.mouse.down()
    for i in range(1, 5):  # each pointer event redraws the editor (slow in software rendering): few moves
        page.mouse.move(x0 + box["width"] * 0.09 * i, y0 + box["height"] * 0.1 * i)
    page.mouse.up()
    info = page.get_by_text("will be regenerated")
    info.wait_for(timeout=15_000)
    n_tokens = int(info.inner_text().split()[0])
    assert n_tokens > 0
    record_values(page, "#ip-status textarea")
    page.click("#inpaint-btn")
    page.wait_for_function("() => document.querySelector('#ip-status textarea').value.includes('done')",
                           timeout=60_000)
    seen = [v for v in page.evaluate("window.__seen") if v.startswith("step ")]
    assert len(seen) >= 2 and f"of {n_tokens} tokens" in seen[-1]
    wait_image(page, "#ip-result")
    shot(page, "inpaint")


def test_retrieval(page):
    open_tab(page, "Retrieval")
    pick_example(page, 2, "#query")
    page.click("#search-btn")
    page.wait_for_function("() => document.querySelectorAll('#neighbours img').length >= 8", timeout=30_000)
    page.get_by_text("by cosine similarity").wait_for(timeout=10_000)
    page.wait_for_timeout(300)
    shot(page, "retrieval")


def test_masking_ratio(page):
    open_tab(page, "Masking ratio")
    pick_example(page, 3, "#ratio-img")
    page.click("#ratio-btn")
    page.get_by_text(re.compile(r"Masked \d+ of \d+ tokens")).wait_for(timeout=60_000)
    page.wait_for_timeout(300)
    shot(page, "masking_ratio")


def test_model_tab(page):
    open_tab(page, "Model")
    page.get_by_text("MAGE parameters").wait_for(timeout=10_000)
    shot(page, "model")
