"""The package's shape: lessons vs course tooling, the README's chapter map, chapter-named docstrings."""

import ast
import re
from pathlib import Path

import pytest

import sft_lessons
from sft_lessons.paths import notebooks_dir, project_root

PACKAGE = Path(sft_lessons.__file__).parent
LESSON_MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
CHAPTER_TAG = re.compile(r"\(第 (\d) 章, notebooks/(\d\d_\w+)\.ipynb\)")
MAP_HEADING = "## 章节与模块"
OTHERS_LINE = "没有笔记本直接导入的模块："


def first_doc_line(module: str) -> str:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    return (ast.get_docstring(tree) or "").splitlines()[0]


def module_chapter(module: str) -> int:
    """The chapter a lesson module's first docstring line names."""
    match = CHAPTER_TAG.search(first_doc_line(module))
    assert match, f"sft_lessons/{module}.py: first docstring line lacks '(第 N 章, notebooks/NN_name.ipynb)'"
    return int(match.group(1))


def notebook_imports(path: Path) -> set[str]:
    """The sft_lessons modules a notebook imports, e.g. {'lora', 'course.plots'}."""
    import nbformat

    mods = set()
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:  # IPython magics: none of our import lines use them
            tree = ast.parse("\n".join(line for line in cell.source.splitlines() if not line.startswith(("%", "!"))))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sft_lessons"):
                base = node.module.removeprefix("sft_lessons").lstrip(".")
                if base in ("", "course"):
                    mods |= {f"{base}.{a.name}".lstrip(".") for a in node.names}
                else:
                    mods.add(base)
            elif isinstance(node, ast.Import):
                mods |= {a.name.removeprefix("sft_lessons.") for a in node.names if a.name.startswith("sft_lessons.")}
    return mods


def expected_map() -> list[tuple[str, str, str, str]]:
    """(chapter, notebook, taught modules, used modules) per notebook, from its imports and the docstrings."""
    rows = []
    for path in sorted(notebooks_dir().glob("[0-9][0-9]_*.ipynb")):
        chapter = int(path.name[:2])
        mods = notebook_imports(path)
        taught = sorted(m for m in mods if m in LESSON_MODULES and module_chapter(m) == chapter)
        used = sorted(mods - set(taught), key=lambda m: (m.startswith("course."), m))
        rows.append((str(chapter), f"`{path.name}`", ", ".join(f"`{m}`" for m in taught) or "—",
                     ", ".join(f"`{m}`" for m in used) or "—"))  # fmt: skip
    return rows


def readme_map() -> tuple[list[tuple[str, ...]], str]:
    """The README's chapter map rows and its line listing the modules no notebook imports."""
    text = (project_root() / "README.md").read_text(encoding="utf-8")
    assert MAP_HEADING in text, f"README.md lacks the section {MAP_HEADING!r}"
    section = text.split(MAP_HEADING, 1)[1].split("\n## ", 1)[0]
    rows = [tuple(c.strip() for c in line.strip().strip("|").split("|")) for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| 章")]  # fmt: skip
    others = next((line for line in section.splitlines() if line.startswith(OTHERS_LINE)), "")
    return rows, others


def test_every_lesson_module_names_its_chapter():
    for module in LESSON_MODULES:
        chapter = module_chapter(module)
        notebook = CHAPTER_TAG.search(first_doc_line(module)).group(2)
        assert notebook.startswith(f"{chapter:02d}_") and (notebooks_dir() / f"{notebook}.ipynb").is_file(), module


def test_readme_map_matches_the_notebooks_imports():
    rows, others = readme_map()
    expected = expected_map()
    table = "\n".join("| " + " | ".join(r) + " |" for r in expected)
    assert rows == expected, f"README.md's chapter map has drifted; the notebooks' imports give:\n{table}"
    imported = set().union(*(notebook_imports(p) for p in notebooks_dir().glob("[0-9][0-9]_*.ipynb")))
    unimported = sorted(set(LESSON_MODULES) - imported)
    listed = re.findall(r"`(\w+)`", others)
    assert sorted(listed) == unimported, f"README.md: {OTHERS_LINE} should list {unimported}"


def imports_of(path: Path) -> set[str]:
    """Absolute names of the sft_lessons modules a package file imports (anywhere in it)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
                found |= {name} if node.module else {f"{base}.{a.name}" for a in node.names}
            elif (node.module or "").startswith("sft_lessons"):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sft_lessons")}
    return found


def package_graph() -> dict[str, set[str]]:
    files = {p: ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts) for p in PACKAGE.rglob("*.py")}
    names = {n.removesuffix(".__init__") for n in files.values()}
    graph = {}
    for path, name in files.items():
        deps = {d for d in imports_of(path) if d in names and d != name.removesuffix(".__init__")}
        graph[name.removesuffix(".__init__")] = deps
    return graph


def test_no_lesson_module_imports_the_course_tooling():
    for name, deps in package_graph().items():
        if not name.startswith("sft_lessons.course"):
            assert not {d for d in deps if d.startswith("sft_lessons.course")}, name


def test_the_import_graph_has_no_cycles():
    graph, state = package_graph(), {}

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                pytest.fail("import cycle: " + " -> ".join([*stack, node, dep]))
            if dep not in state:
                visit(dep, [*stack, node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_one_definition_of_each_shared_helper():
    """One timing helper, one parameter counter, one optimizer-state counter, one IGNORE_INDEX."""
    sources = {p: p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py")}
    perf = [p.name for p, s in sources.items() if "time.perf_counter()" in s and "synchronize" in s]
    assert perf == [], f"timing loops outside sft_lessons/timing.py: {perf}"
    assert [p.name for p, s in sources.items() if "torch.cuda.synchronize" in s] == ["timing.py"]
    assert [p.name for p, s in sources.items() if re.search(r"p\.numel\(\) for p in \w+\.parameters\(\)", s)] == ["memory.py"]
    assert [p.name for p, s in sources.items() if "def optimizer_state_bytes" in s] == ["memory.py"]
    assert [p.name for p, s in sources.items() if re.search(r"^IGNORE_INDEX = ", s, re.M)] == ["data.py"]
    code = {p: re.sub(r'""".*?"""|#.*', "", s, flags=re.S) for p, s in sources.items() if p.name != "data.py"}
    literal = [p.name for p, s in code.items() if re.search(r"(?<![\w.])-100\b", s)]
    assert literal == [], f"use IGNORE_INDEX instead of -100 in {literal}"


def test_lesson_modules_import_at_the_top():
    """torch, libraries and siblings at the top; only deepspeed, bitsandbytes and matplotlib stay lazy."""
    lazy_ok = {"deepspeed", "bitsandbytes", "matplotlib"}
    for module in LESSON_MODULES:
        tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
        top = set(tree.body)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node not in top:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                roots = {n.split(".")[0] for n in names} if not getattr(node, "level", 0) else {"sibling"}
                assert roots <= lazy_ok, f"{module}.py:{node.lineno}: lazy import of {names}"


def test_no_private_name_crosses_a_module():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("sft_lessons")):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name}:{node.lineno} imports private {private}: make it public"
