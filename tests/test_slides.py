"""Slides: the export-time cut (no browser), then the decks in a real headless Chromium: fit, fonts, math, errors."""

import json
import re
import shutil
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from sft_lessons.course import notebooks as course
from sft_lessons.course import slide_layout as layout
from sft_lessons.course import slides
from sft_lessons.course.notebooks import select_notebooks
from sft_lessons.paths import build_dir, notebooks_dir
from sft_lessons.settings import require_browser

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
NOTEBOOKS = select_notebooks([], notebooks_dir())
SCREENS = [(1280, 720), (1920, 1080)]
TOLERANCE_PX = 4  # sub-pixel rounding of scaled text; anything more is content cut off by the screen edge
FIT_JS = (Path(__file__).parent / "slides_fit.js").read_text()

MISSING = "Chromium missing: apt-get install chromium chromium-driver (.ci/run does)"
if require_browser() and not (CHROMIUM and CHROMEDRIVER):
    raise RuntimeError(MISSING + "; SFT_LESSONS_REQUIRE_BROWSER is set, so the test may not skip")
needs_browser = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason=MISSING)


# --- the cut, without a browser ----------------------------------------------------------------------------------


def _kinds(nb):
    return [(c.cell_type, slides.slide_kind(c)) for c in nb.cells]


def _stream(text):
    return new_output("stream", name="stdout", text=text)


def test_every_code_cell_starts_a_slide_and_long_code_is_trimmed_with_the_full_code_in_the_notes():
    code = "\n".join(f"x{i} = {i}" for i in range(40))
    nb = new_notebook(
        cells=[new_markdown_cell("# t", metadata={"slideshow": {"slide_type": "slide"}}), new_code_cell(code)]
    )
    cut = slides.cut_for_screen(nb)
    assert _kinds(cut) == [("markdown", "slide"), ("code", "subslide"), ("markdown", "notes")]
    shown = cut.cells[1].source.splitlines()
    head = layout.SCREEN.code_lines - 1 - layout.SCREEN.tail_lines  # one row for the cut mark
    assert shown == code.splitlines()[:head] + [f"# …（{40 - head - 3} 行见笔记本）"] + code.splitlines()[-3:]
    assert code in cut.cells[2].source
    assert nb.cells[1].source == code  # the notebook itself keeps its code


def test_metadata_picks_the_code_and_output_lines_a_slide_shows():
    code = "\n".join(f"x{i} = {i}" for i in range(1, 31))
    out = "\n".join(f"line {i}" for i in range(1, 41))
    cell = new_code_cell(
        code,
        outputs=[_stream(out)],
        metadata={"slides": {"code_lines": [[5, 6], [30, 30]], "output_lines": [[40, 40]]}},
    )
    cut = slides.cut_for_screen(new_notebook(cells=[cell]))
    assert cut.cells[0].source == "# …（4 行见笔记本）\nx5 = 5\nx6 = 6\n# …（23 行见笔记本）\nx30 = 30"
    assert cut.cells[0].outputs[0].text == "…（39 行见笔记本）\nline 40\n"
    assert "slides" not in cut.cells[0].metadata and cut.cells[-1].metadata.slideshow.slide_type == "notes"
    assert "line 1\n" in cut.cells[-1].source  # the full output is in the notes


def test_a_bad_slides_key_is_named():
    for spec, bad in [({"code_line": [[1, 2]]}, "'code_line'"), ({"code_lines": [[3, 1]]}, "[[3, 1]]")]:
        with pytest.raises(ValueError, match=re.escape(bad)):
            slides.cut_for_screen(new_notebook(cells=[new_code_cell("1", metadata={"slides": spec})]))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_notebooks_slide_ranges_point_at_lines_that_exist(path):
    """Ranges go stale when a cell is edited or re-executed: they must stay inside the cell's code and output."""
    for cell in nbformat.read(path, as_version=4).cells:
        spec = slides.slide_spec(cell)
        text = {
            "code_lines": cell.source,
            "output_lines": "".join(o.get("text", "") for o in cell.get("outputs", [])),
        }
        for key, ranges in spec.items():
            assert max(b for _, b in ranges) <= len(text[key].splitlines()), (path.name, cell.id, key)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_section_is_one_step_to_the_right(path):
    """Right arrow: the next '## ' section; everything else of a section lies below it (down arrow)."""
    for i, cell in enumerate(nbformat.read(path, as_version=4).cells[1:], start=1):
        heading = cell.cell_type == "markdown" and cell.source.startswith("## ")
        assert (slides.slide_kind(cell) == "slide") == heading, (path.name, i, cell.source[:40])


def test_nbval_markers_are_not_shown():
    cut = slides.cut_for_screen(new_notebook(cells=[new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1)")]))
    assert cut.cells[0].source == "print(1)" and len(cut.cells) == 1


def test_outputs_that_do_not_fit_beside_the_code_go_to_an_output_only_slide():
    nb = new_notebook(cells=[new_code_cell("print(1)\n" * 12, outputs=[_stream("1\n" * 14)])])
    cut = slides.cut_for_screen(nb)
    assert _kinds(cut) == [("code", "subslide"), ("code", "subslide")]
    assert cut.cells[0].outputs == [] and cut.cells[1].outputs[0].text == "1\n" * 14
    assert cut.cells[1].metadata.transient == {"remove_source": True}  # nbconvert shows the outputs only


def test_consecutive_streams_merge_before_they_are_trimmed():
    nb = new_notebook(cells=[new_code_cell("f()", outputs=[_stream(f"{i}\n") for i in range(30)])])
    outputs = [o for c in slides.cut_for_screen(nb).cells if c.cell_type == "code" for o in c.outputs]
    assert len(outputs) == 1 and outputs[0].text.count("\n") == layout.SCREEN.output_lines
    assert outputs[0].text.endswith("…（15 行见笔记本）\n27\n28\n29\n")


def test_long_prose_is_split_at_sentences_with_the_whole_cell_in_the_notes():
    text = "## 标题\n\n" + "这是一个很长的句子，用来测试幻灯片的切分。" * 40
    cut = slides.cut_for_screen(
        new_notebook(cells=[new_markdown_cell(text, metadata={"slideshow": {"slide_type": "slide"}})])
    )
    shown = [c for c in cut.cells if slides.slide_kind(c) != "notes"]
    notes = [c for c in cut.cells if slides.slide_kind(c) == "notes"]
    assert len(shown) > 2 and slides.slide_kind(shown[0]) == "slide"
    assert all(slides.slide_kind(c) == "subslide" for c in shown[1:])
    assert all(
        sum(layout.block_height(b) for b in layout.markdown_blocks(c.source)) <= layout.SCREEN.budget
        for c in shown
    )
    assert "".join(c.source for c in shown).replace("## 标题", "").replace("\n", "") == text[7:]
    assert len(notes) == len(shown) and all(n.source == text for n in notes)


def test_prose_after_code_starts_a_new_slide_and_short_fragments_stay():
    cells = [
        new_markdown_cell("## a", metadata={"slideshow": {"slide_type": "slide"}}),
        new_markdown_cell("b", metadata={"slideshow": {"slide_type": "fragment"}}),
        new_code_cell("1"),
        new_markdown_cell("c"),
        new_code_cell("2", metadata={"slideshow": {"slide_type": "skip"}}),
    ]
    assert _kinds(slides.cut_for_screen(new_notebook(cells=cells))) == [
        ("markdown", "slide"),
        ("markdown", "fragment"),
        ("code", "subslide"),
        ("markdown", "subslide"),
    ]


def test_dataframe_html_becomes_tables_that_fit():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({f"a fairly long column name {i}": range(40) for i in range(8)})
    out = new_output(
        "execute_result", data={"text/html": df.to_html(), "text/plain": str(df)}, execution_count=1
    )
    cut = slides.cut_for_screen(new_notebook(cells=[new_code_cell("df", outputs=[out])]))
    tables = [o.data["text/html"] for c in cut.cells if c.cell_type == "code" for o in c.outputs]
    assert len(tables) > 2 and all(t.startswith('<table class="dataframe">') for t in tables)
    assert all("<th>a fairly long column name 0</th>" in t for t in tables[:2])


def test_the_notebook_on_disk_is_not_changed_by_the_cut():
    path = NOTEBOOKS[0]
    before = path.read_bytes()
    slides.cut_for_screen(nbformat.read(path, as_version=4))
    assert path.read_bytes() == before


def test_web_libs_keep_only_the_files_the_decks_need():
    keep = course.WEB_LIBS["@fontsource/noto-sans-sc@5.2.9"]
    assert course._lib_name("@fontsource/noto-sans-sc@5.2.9") == "noto-sans-sc"
    assert course._lib_name("reveal.js@4.0.2") == "reveal.js"
    assert course._kept("files/noto-sans-sc-17-400-normal.woff2", keep)
    assert not course._kept("files/noto-sans-sc-17-400-normal.woff", keep)
    assert not course._kept("files/noto-sans-sc-17-100-normal.woff2", keep)
    assert course._kept("dist/reveal.js", course.WEB_LIBS["reveal.js@4.0.2"])


def test_web_libs_are_copied_beside_the_decks_when_their_version_changes(tmp_path):
    libs, dest = tmp_path / "cache", tmp_path / "slides" / "lib"
    (libs / "font").mkdir(parents=True)
    (libs / "font" / ".complete").write_text("font@1")
    (libs / "font" / "a.css").write_text("v1")
    course.copy_web_libs(libs, dest)
    (libs / "font" / "a.css").write_text("v2")
    course.copy_web_libs(libs, dest)  # same version: kept
    assert (dest / "font" / "a.css").read_text() == "v1"
    (libs / "font" / ".complete").write_text("font@2")
    course.copy_web_libs(libs, dest)
    assert (dest / "font" / "a.css").read_text() == "v2"


# --- the decks in Chromium ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def decks():
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
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_script_timeout(300)
    yield driver
    driver.quit()


def _open(driver, deck: Path, width: int, height: int, timeout: float = 30) -> None:
    """Load a deck with the viewport (not the window) exactly width x height, once reveal.js and the fonts are ready."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    driver.get(deck.as_uri())
    deadline = time.time() + timeout
    # reveal.js is loaded through RequireJS (no global), so read its state from the DOM.
    while not driver.execute_script("return document.querySelector('.reveal').classList.contains('ready')"):
        assert time.time() < deadline, f"{deck.name}: reveal.js did not initialise"
        time.sleep(0.1)
    driver.execute_async_script("document.fonts.ready.then(arguments[0])")
    assert driver.execute_script("return [innerWidth, innerHeight]") == [width, height]


@needs_browser
@pytest.mark.parametrize("stem", [nb.stem for nb in NOTEBOOKS])
def test_deck_opens_in_chromium(stem, decks, browser):
    nb = nbformat.read(notebooks_dir() / f"{stem}.ipynb", as_version=4)
    _open(browser, decks[stem], 1280, 720)
    leaf_slides = (
        "return Array.from(document.querySelectorAll('.reveal .slides section'))"
        ".filter(s => !s.querySelector('section')).length"
    )
    assert browser.execute_script(leaf_slides) == course.expected_slide_count(slides.cut_for_screen(nb))
    title = nb.cells[0].source.splitlines()[0].lstrip("# ").strip()
    assert title in browser.execute_script(
        "return document.querySelector('.reveal .slides section').textContent"
    )
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.currentSrc.slice(0, 60), i.complete, i.naturalWidth])"
    )
    broken = [img for img in images if not (img[1] and img[2] > 0)]
    assert not broken, f"{stem}: images failed to load: {broken}"
    assert browser.execute_script("return document.querySelectorAll('.reveal aside.notes').length") > 0
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, f"{stem}: browser errors: {json.dumps(errors)[:800]}"
    browser.save_screenshot(str(build_dir() / f"slides_{stem}_title.png"))


@needs_browser
@pytest.mark.parametrize("screen", SCREENS, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("stem", [nb.stem for nb in NOTEBOOKS])
def test_every_slide_fits_the_screen(stem, screen, decks, browser):
    _open(browser, decks[stem], *screen)
    measured = browser.execute_async_script(FIT_JS)  # [h, v, overflow px, bottom, right] per slide
    off = [m for m in measured if m[2] > TOLERANCE_PX]
    report = build_dir() / "slides_fit.json"
    rows = json.loads(report.read_text()) if report.exists() else {}
    rows[f"{stem} {screen[0]}x{screen[1]}"] = {
        "slides": len(measured),
        "off_screen": len(off),
        "worst_px": max(m[2] for m in measured),
    }
    report.write_text(json.dumps(rows, indent=1, sort_keys=True))
    print(f"{stem} {screen[0]}x{screen[1]}: {len(off)} of {len(measured)} slides off the screen")
    assert not off, (
        f"{stem}: {len(off)} of {len(measured)} slides run off a {screen} screen ([h, v, px, bottom, right]): {off[:10]}"
    )


@needs_browser
def test_chinese_renders_with_the_bundled_font(decks, browser):
    _open(browser, decks["03_lora_math"], 1280, 720)  # Chinese in its title, its code comments and outputs
    loaded = browser.execute_script(
        "return Array.from(document.fonts).filter(f => f.family.includes('Noto Sans SC') && f.status === 'loaded').length"
    )
    assert loaded > 0
    browser.execute_cdp_cmd("DOM.enable", {})
    browser.execute_cdp_cmd("CSS.enable", {})
    assert _fonts_of(browser, ".reveal .slides section h1")  # the title slide
    # the first code or output text with Chinese in it (comments, printed results), once its slide is shown
    assert browser.execute_async_script(
        "const done = arguments[0];"
        "const el = Array.from(document.querySelectorAll('.reveal pre, .reveal pre *')).find(e => !e.closest('aside')"
        " && Array.from(e.childNodes).some(n => n.nodeType === 3 && /[\\u4e00-\\u9fff]/.test(n.textContent)));"
        "if (!el) return done(false);"
        "el.id = 'cjk-in-code';"
        "require(['lib/reveal.js/dist/reveal.js'], R => { const i = R.getIndices(el.closest('section'));"
        " R.slide(i.h, i.v); requestAnimationFrame(() => done(true)); });"
    )
    assert _fonts_of(browser, "#cjk-in-code")


def _fonts_of(browser, selector: str) -> list[str]:
    """The fonts Chromium drew a shown element's own text with; fails unless the CJK glyphs came from the web font."""
    root = browser.execute_cdp_cmd("DOM.getDocument", {"depth": -1})["root"]["nodeId"]
    node = browser.execute_cdp_cmd("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
    fonts = browser.execute_cdp_cmd("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
    # a web font ("Noto Sans SC Thin" is the family name inside fontsource's files), not the system's CJK font
    assert any(f["isCustomFont"] and f["familyName"].startswith("Noto Sans SC") for f in fonts), (
        selector,
        fonts,
    )
    assert not any("WenQuanYi" in f["familyName"] for f in fonts), (selector, fonts)
    return [f["familyName"] for f in fonts]


@needs_browser
def test_body_text_is_at_least_reveals_default_size_on_a_1280x720_screen(decks, browser):
    _open(browser, decks[NOTEBOOKS[0].stem], 1280, 720)
    size, scale = browser.execute_async_script(
        "var done = arguments[0]; require(['lib/reveal.js/dist/reveal.js'], R => done(["
        "parseFloat(getComputedStyle(document.querySelector('.jp-RenderedMarkdown p')).fontSize), R.getScale()]))"
    )
    default = 42 * min(
        1280 * 0.96 / 960, 720 * 0.96 / 700
    )  # reveal.js white theme on its 960x700 slide, margin 0.04
    assert size * scale >= default - 0.01, (size, scale, default)


@needs_browser
def test_math_renders_offline(decks, browser):
    with_math = next(nb.stem for nb in NOTEBOOKS if "$$" in nb.read_text(encoding="utf-8"))
    _open(browser, decks[with_math], 1280, 720)
    browser.execute_async_script("MathJax.Hub.Queue(arguments[0])")
    assert browser.execute_script("return document.querySelectorAll('.reveal .MathJax_CHTML').length") > 0
    raw = browser.execute_script(
        "const w = document.createTreeWalker(document.querySelector('.reveal .slides'), NodeFilter.SHOW_TEXT);"
        "const raw = []; let n;"
        "while ((n = w.nextNode())) { if (!n.parentElement.closest('pre, code, script, aside')"
        " && /\\$[^$\\s][^$]*\\$/.test(n.textContent)) raw.push(n.textContent.slice(0, 80)); }"
        "return raw;"
    )
    assert not raw, f"TeX left unrendered: {raw[:5]}"
    # showing a slide must not draw its formulas again (nbconvert's template re-rendered them on every slide change)
    glyphs = "return document.querySelectorAll('.reveal .slides .mjx-char').length"
    before = browser.execute_script(glyphs)
    browser.execute_async_script(
        "const done = arguments[0];"
        "require(['lib/reveal.js/dist/reveal.js'], R => { const s = document.querySelector('.reveal .mjx-chtml')"
        ".closest('section'); const i = R.getIndices(s); R.slide(i.h, i.v); MathJax.Hub.Queue(done); });"
    )
    assert browser.execute_script(glyphs) == before > 0
