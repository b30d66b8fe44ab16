import matplotlib
import pytest

from sft_lessons import figures

PNG = b"\x89PNG\r\n\x1a\n"
DIAGRAMS = [
    figures.course_map,
    figures.prompt_learning_stages,
    figures.icl_prefix_cache,
    figures.lora_structure,
    figures.lora_variants_map,
    figures.rope_wavelengths,
    figures.interpolation_vs_extrapolation,
    figures.self_instruct_pipeline,
    figures.sft_pipeline,
]


@pytest.mark.parametrize("diagram", DIAGRAMS, ids=lambda f: f.__name__)
def test_diagram_writes_a_png_without_switching_backend(diagram, tmp_path):
    backend = matplotlib.get_backend()
    path = diagram(out_dir=tmp_path)
    assert path.parent == tmp_path and path.read_bytes()[:8] == PNG
    assert matplotlib.get_backend() == backend  # notebooks keep their inline plots


def test_every_public_diagram_is_tested():
    public = {
        name
        for name, obj in vars(figures).items()
        if callable(obj) and not name.startswith("_") and getattr(obj, "__module__", "") == figures.__name__
    }
    assert public == {f.__name__ for f in DIAGRAMS}


def test_default_output_is_the_images_folder():
    from sft_lessons.paths import images_dir

    assert figures._out("x.png") == images_dir() / "x.png"
