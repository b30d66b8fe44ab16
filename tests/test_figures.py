import struct

import matplotlib
import pytest

from sft_lessons.course import figures
from sft_lessons.paths import images_dir

PNG = b"\x89PNG\r\n\x1a\n"
HELPERS = {"output_path", "new_figure", "save_figure", "draw_all"}


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    assert data[:8] == PNG
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("diagram", figures.DIAGRAMS, ids=lambda f: f.__name__)
def test_diagram_redraws_the_committed_image(diagram, tmp_path):
    backend = matplotlib.get_backend()
    path = diagram(out_dir=tmp_path)
    assert path.parent == tmp_path
    committed = images_dir() / path.name
    assert committed.is_file(), f"run `sft-lessons figures` and commit {committed.name}"
    assert png_size(path.read_bytes()) == png_size(committed.read_bytes())  # same layout as the committed one
    assert matplotlib.get_backend() == backend  # notebooks keep their inline plots


def test_every_public_diagram_is_drawn_by_draw_all():
    public = {
        name
        for name, obj in vars(figures).items()
        if callable(obj) and not name.startswith("_") and getattr(obj, "__module__", "") == figures.__name__
    }
    assert public - HELPERS == {f.__name__ for f in figures.DIAGRAMS}


def test_images_holds_only_diagrams(tmp_path):
    """Plots of a run's measurements go to build/, so images/ is exactly what `sft-lessons figures` draws."""
    drawn = {p.name for p in figures.draw_all(tmp_path)}
    assert {p.name for p in images_dir().glob("*.png")} == drawn


def test_default_output_is_the_images_folder():
    assert figures.output_path("x.png") == images_dir() / "x.png"
