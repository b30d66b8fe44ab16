import nbformat
import psutil
import pytest

from sft_lessons.course import cli, notebooks


def _nb(path, source):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_select_notebooks_by_number_and_prefix(tmp_path):
    for name in ("00_overview", "01_prompt", "03_lora"):
        _nb(tmp_path / f"{name}.ipynb", "1")
    assert [p.stem for p in notebooks.select_notebooks([], tmp_path)] == ["00_overview", "01_prompt", "03_lora"]
    assert [p.stem for p in notebooks.select_notebooks(["3", "00"], tmp_path)] == ["03_lora", "00_overview"]
    with pytest.raises(SystemExit, match="available"):
        notebooks.select_notebooks(["9"], tmp_path)


def test_execute_notebook_writes_outputs_and_cleans_stderr(tmp_path):
    src = tmp_path / "00_demo.ipynb"
    _nb(src, "import sys\nprint('hello')\nprint('noise', file=sys.stderr)")
    status, seconds, nb = notebooks.execute_notebook(src, tmp_path / "out" / "00_demo.ipynb", timeout=120)
    assert status == "ok" and seconds > 0
    assert (tmp_path / "out" / "00_demo.ipynb").exists()
    assert "execution" in nb.cells[0].metadata  # nbclient records timestamps
    notebooks.clean_outputs(nb)
    assert [o["text"] for o in nb.cells[0].outputs] == ["hello\n"]
    assert "execution" not in nb.cells[0].metadata


def test_kernels_run_without_the_tcp_warning(tmp_path, capfd):
    src = tmp_path / "00_demo.ipynb"
    _nb(src, "print(1)")
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    assert notebooks.execute_notebook(src, tmp_path / "out.ipynb", timeout=120)[0] == "ok"
    assert "without encryption" not in capfd.readouterr().err
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in children and p.is_running()]
    assert not [p for p in left if p.status() != psutil.STATUS_ZOMBIE], "the kernel was not shut down"


def test_parser_knows_the_commands():
    parser = cli.build_parser()
    assert parser.parse_args(["run", "00"]).chapters == ["00"]
    assert parser.parse_args(["fetch", "--verify"]).verify


def test_figures_command_draws_every_diagram(tmp_path, capsys):
    from sft_lessons.course import figures

    assert cli.main(["figures", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(p.name for p in figures.draw_all(tmp_path))
    assert len(capsys.readouterr().out.splitlines()) == len(figures.DIAGRAMS)
