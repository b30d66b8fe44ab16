import ast

import nbformat
import pytest

from sft_lessons.course import exercises
from sft_lessons.course import notebooks as course
from sft_lessons.course.notebooks import select_notebooks
from sft_lessons.paths import notebooks_dir

NOTEBOOKS = select_notebooks([], notebooks_dir())


def test_expected_slide_count():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), nbformat.v4.new_code_cell("1")]
    nb.cells.append(nbformat.v4.new_markdown_cell("## a", metadata={"slideshow": {"slide_type": "slide"}}))
    nb.cells.append(nbformat.v4.new_markdown_cell("b", metadata={"slideshow": {"slide_type": "subslide"}}))
    nb.cells.append(nbformat.v4.new_markdown_cell("c", metadata={"slideshow": {"slide_type": "fragment"}}))
    assert course.expected_slide_count(nb) == 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_practice_copy_has_no_outputs_and_no_solutions(path, tmp_path):
    before = path.read_bytes()
    copy = nbformat.read(course.practice_copy(path, tmp_path), as_version=4)
    original = nbformat.read(path, as_version=4)
    assert len(copy.cells) == len(original.cells)
    for cell in copy.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
            ast.parse(cell.source.replace("%", "#"))  # still valid Python (magics aside)
            if course.EXERCISE_TAG in cell.metadata.get("tags", []):
                assert "TODO" in cell.source and "sft_lessons.course.solutions" not in cell.source
    assert path.read_bytes() == before  # the original is untouched


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_exercise_listing_matches_notebook(path):
    listed = course.list_exercises(path)
    assert 3 <= len(listed) <= 5 or path.name.startswith("00"), f"{path.name}: 练习 needs 3-5 exercises"
    assert [e.number for e in listed] == list(range(1, len(listed) + 1))
    nb = nbformat.read(path, as_version=4)
    tagged = {
        m.group(1)
        for c in nb.cells
        if course.EXERCISE_TAG in c.metadata.get("tags", [])
        for m in [course.EXERCISE_KEY.search(c.source)]
        if m
    }
    chapter = path.name[:2]
    registered = {k for k in exercises.EXERCISES if k.startswith(chapter + ".")}
    assert tagged == registered, f"{path.name}: exercise cells {tagged} vs registered checkers {registered}"
    assert {f"{chapter}.{e.number}" for e in listed if e.has_checker} == registered


def test_run_table_prints_this_machines_matmul_rate_against_the_readmes():
    from sft_lessons.paths import project_root

    rows = [{"notebook": "00_overview.ipynb", "status": "ok", "seconds": 8.0}]
    gemm = {"n": 2048, "dtype": "float32", "flops_per_s": course.README_GEMM_GFLOPS * 1e9 / 2}
    table = course.format_run_table(rows, gemm)
    assert "00_overview.ipynb  ok" in table and "total" in table
    assert f"{course.README_GEMM_GFLOPS / 2:.0f} GFLOP/s" in table and "about 2.0x the README's times" in table
    readme = (project_root() / "README.md").read_text(encoding="utf-8")
    assert f"实测 {course.README_GEMM_GFLOPS} GFLOP/s" in readme  # the constant is the README's own figure
