"""The exported reveal.js decks, opened in a real headless Chromium: slide count, title, images, no JS errors."""

import json
import shutil
import time

import nbformat
import pytest

from sft_lessons.course import notebooks as course
from sft_lessons.course.notebooks import select_notebooks
from sft_lessons.paths import build_dir, notebooks_dir
from sft_lessons.settings import require_browser

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
NOTEBOOKS = select_notebooks([], notebooks_dir())

MISSING = "Chromium missing: apt-get install chromium chromium-driver (.ci/run does)"
if require_browser() and not (CHROMIUM and CHROMEDRIVER):
    raise RuntimeError(MISSING + "; SFT_LESSONS_REQUIRE_BROWSER is set, so the test may not skip")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason=MISSING)


@pytest.fixture(scope="module")
def decks(tmp_path_factory):
    out = build_dir() / "slides"
    libs = course.fetch_web_libs()
    shutil.copytree(notebooks_dir().parent / "images", out.parent / "images", dirs_exist_ok=True)
    return {nb.stem: course.export_slides(nb, out, libs) for nb in NOTEBOOKS}


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--allow-file-access-from-files",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def _wait_for_reveal(driver, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        # reveal.js is loaded through RequireJS (no global), so read its state from the DOM.
        if driver.execute_script("return document.querySelector('.reveal').classList.contains('ready')"):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("stem", [nb.stem for nb in NOTEBOOKS])
def test_deck_opens_in_chromium(stem, decks, browser):
    nb = nbformat.read(notebooks_dir() / f"{stem}.ipynb", as_version=4)
    browser.get(decks[stem].as_uri())
    assert _wait_for_reveal(browser), f"{stem}: reveal.js did not initialise"
    time.sleep(0.5)  # let MathJax and images settle
    leaf_slides = (
        "return Array.from(document.querySelectorAll('.reveal .slides section'))"
        ".filter(s => !s.querySelector('section')).length"
    )
    assert browser.execute_script(leaf_slides) == course.expected_slide_count(nb)
    title = nb.cells[0].source.splitlines()[0].lstrip("# ").strip()
    assert title in browser.execute_script(
        "return document.querySelector('.reveal .slides section').textContent"
    )
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.currentSrc.slice(0, 60), i.complete, i.naturalWidth])"
    )
    broken = [img for img in images if not (img[1] and img[2] > 0)]
    assert not broken, f"{stem}: images failed to load: {broken}"
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, f"{stem}: browser errors: {json.dumps(errors)[:800]}"
    browser.save_screenshot(str(build_dir() / f"slides_{stem}_title.png"))
